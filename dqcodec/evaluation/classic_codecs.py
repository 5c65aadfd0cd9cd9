"""Classic image codecs (JPEG, WebP, AVIF, HEIC, JPEG XL) measured on real bitstreams.

Each codec encodes an 8-bit RGB PIL image to bytes in memory at one setting and decodes those
bytes again, so sizes and distortions are those of the actual files. The settings of each codec are
chosen so that its curve spans roughly 0.1–1.6 bpp on Kodak-like photographs (see
``shared/anchors/kodak_pillow_codecs.json``).

    codecs, unavailable = available_codecs(["jpeg", "heic"])
    points = evaluate_baseline("jpeg", paths)
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dqcodec.codec import EncodeResult
from dqcodec.errors import DQError
from dqcodec.evaluation.evaluate import curve_point, evaluate

Setting = float  # quality (jpeg, webp, avif, heic) or butteraugli distance (jxl)


class BaselineError(DQError):
    pass


@dataclass(frozen=True)
class ClassicCodec:
    """One classic codec and the settings that span its curve; `at(setting)` is a coder for
    the evaluation loop."""

    name: str
    description: str
    setting_name: str  # "quality" or "distance"
    settings: tuple[Setting, ...]  # ordered from the lowest to the highest rate
    encode: Callable[[Image.Image, Setting], bytes]
    decode: Callable[[bytes], Image.Image]
    probe: Callable[[], str | None]  # None when usable, else a one-line reason

    def at(self, setting: Setting) -> ClassicCoder:
        return ClassicCoder(self, setting)


@dataclass(frozen=True)
class ClassicCoder:
    """A classic codec at one setting, on 8-bit RGB."""

    codec: ClassicCodec
    setting: Setting

    def encode(self, image: Image.Image) -> EncodeResult:
        return EncodeResult(self.codec.encode(image.convert("RGB"), self.setting))

    def decode(self, data: bytes) -> Image.Image:
        return self.codec.decode(data).convert("RGB")


# --------------------------------------------------------------------------- Pillow codecs


def _pillow_encode(fmt: str, **options) -> Callable[[Image.Image, Setting], bytes]:
    def encode(image: Image.Image, setting: Setting) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format=fmt, quality=int(setting), **options)
        return buf.getvalue()

    return encode


def _pillow_decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGB")


def _pillow_probe(feature: str | None) -> Callable[[], str | None]:
    def probe() -> str | None:
        if feature is None:
            return None
        from PIL import features

        try:
            if features.check(feature):
                return None
        except ValueError:
            pass
        return f"this Pillow ({Image.__version__}) was built without {feature} support"

    return probe


# --------------------------------------------------------------------------- HEIC (pillow-heif)


def _heic_probe() -> str | None:
    try:
        import pillow_heif
    except ImportError as exc:
        return f"pillow-heif is not installed ({exc}); pip install pillow-heif"
    try:
        encoders = pillow_heif.libheif_info().get("HEIF") or ""
    except Exception as exc:  # noqa: BLE001 - any failure means unusable
        return f"pillow-heif is broken: {exc}"
    if not encoders:
        return "pillow-heif's libheif has no HEVC encoder"
    return None


def _heic_encode(image: Image.Image, setting: Setting) -> bytes:
    import pillow_heif

    buf = io.BytesIO()
    pillow_heif.from_pillow(image).save(buf, quality=int(setting), chroma=444)
    return buf.getvalue()


def _heic_decode(data: bytes) -> Image.Image:
    import pillow_heif

    return (
        pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True).to_pillow().convert("RGB")
    )


# --------------------------------------------------------------------------- JPEG XL (imagecodecs)


def _jxl_probe() -> str | None:
    try:
        import imagecodecs
    except ImportError as exc:
        return f"imagecodecs is not installed ({exc}); pip install imagecodecs"
    try:
        available = bool(imagecodecs.JPEGXL.available)
    except AttributeError:
        available = hasattr(imagecodecs, "jpegxl_encode")
    return None if available else "this imagecodecs was built without JPEG XL (libjxl) support"


def _jxl_encode(image: Image.Image, setting: Setting) -> bytes:
    import imagecodecs

    array = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    return bytes(imagecodecs.jpegxl_encode(array, distance=float(setting), effort=7))


def _jxl_decode(data: bytes) -> Image.Image:
    import imagecodecs

    array = np.asarray(imagecodecs.jpegxl_decode(data))
    if array.dtype != np.uint8:
        raise BaselineError(f"jxl decoded to {array.dtype}, expected uint8")
    if array.ndim == 2:
        return Image.fromarray(array, "L").convert("RGB")
    return Image.fromarray(np.ascontiguousarray(array[..., :3]), "RGB")


# --------------------------------------------------------------------------- registry

# Settings from shared/anchors/kodak_pillow_codecs.json (Kodak means): each list starts near or
# below 0.2 bpp and ends just past 1.6 bpp, so interpolation and BD-rate cover 0.1/0.2–1.6 bpp.
CODECS: dict[str, ClassicCodec] = {
    "jpeg": ClassicCodec(
        "jpeg",
        "JPEG (Pillow/libjpeg), 4:2:0",
        "quality",
        (1, 3, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 85),  # 0.17 (its floor) .. ~1.9 bpp
        _pillow_encode("JPEG"),  # Pillow's default subsampling is 4:2:0
        _pillow_decode,
        _pillow_probe(None),
    ),
    "jpeg444": ClassicCodec(
        "jpeg444",
        "JPEG (Pillow/libjpeg), 4:4:4",
        "quality",
        (5, 10, 15, 20, 30, 40, 50, 60, 70, 75),  # 0.32 .. ~1.6 bpp
        _pillow_encode("JPEG", subsampling=0),
        _pillow_decode,
        _pillow_probe(None),
    ),
    "webp": ClassicCodec(
        "webp",
        "WebP (Pillow/libwebp), method 6",
        "quality",
        (2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90),  # 0.17 .. 1.9 bpp
        _pillow_encode("WEBP", method=6),
        _pillow_decode,
        _pillow_probe("webp"),
    ),
    "avif": ClassicCodec(
        "avif",
        "AVIF (Pillow/libavif), speed 4, 4:4:4",
        "quality",
        (10, 20, 30, 40, 45, 50, 55, 60, 65, 70, 80),  # 0.11 .. 1.7 bpp
        _pillow_encode("AVIF", speed=4, subsampling="4:4:4"),
        _pillow_decode,
        _pillow_probe("avif"),
    ),
    "heic": ClassicCodec(
        "heic",
        "HEIC (pillow-heif, libheif + x265 HEVC intra), 4:4:4",
        "quality",
        (10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60),  # 0.07 .. 2.0 bpp
        _heic_encode,
        _heic_decode,
        _heic_probe,
    ),
    "jxl": ClassicCodec(
        "jxl",
        "JPEG XL (imagecodecs/libjxl), effort 7",
        "distance",
        (16.0, 12.0, 8.0, 6.0, 4.5, 3.5, 2.5, 2.0, 1.5, 1.2, 1.0),  # ~0.18 .. 1.9 bpp
        _jxl_encode,
        _jxl_decode,
        _jxl_probe,
    ),
}


def _probe_image() -> Image.Image:
    y, x = np.mgrid[0:16, 0:16]
    array = np.stack([x * 15, y * 15, (x + y) * 7], -1).astype(np.uint8)
    return Image.fromarray(array, "RGB")


def _round_trip(coder: ClassicCoder, image: Image.Image) -> None:
    decoded = coder.decode(coder.encode(image).data)
    if decoded.size != image.size:
        raise BaselineError(f"decoded size {decoded.size} differs from the input's {image.size}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def codec_unavailable(name: str) -> str | None:
    """None when the codec can be used here, else a one-line reason."""
    codec = CODECS.get(name)
    if codec is None:
        return f"unknown codec {name!r} (known: {', '.join(CODECS)})"
    try:
        reason = codec.probe()
        if reason is None:  # a tiny round trip catches plugins that import but cannot encode
            _round_trip(codec.at(codec.settings[len(codec.settings) // 2]), _probe_image())
    except Exception as exc:  # noqa: BLE001 - report, never raise
        reason = f"{codec.name} fails a test encode: {_one_line(exc)}"
    return reason


def available_codecs(names: Iterable[str]) -> tuple[dict[str, ClassicCodec], dict[str, str]]:
    """-> ({name: ClassicCodec} usable here, {name: one-line reason} for the others).

    Both in the given order.
    """
    usable: dict[str, ClassicCodec] = {}
    unavailable: dict[str, str] = {}
    for raw in names:
        name = raw.strip().lower()
        if not name or name in usable or name in unavailable:
            continue
        reason = codec_unavailable(name)
        if reason is None:
            usable[name] = CODECS[name]
        else:
            unavailable[name] = reason
    return usable, unavailable


def evaluate_baseline(
    name: str,
    paths: Sequence[str | Path],
    progress: bool = True,
    settings: Sequence[Setting] | None = None,
) -> list[dict]:
    """Encode every image at every setting of codec ``name``; one averaged point per setting
    (`evaluate.curve_point`), in the codec's setting order (rising rate)."""
    reason = codec_unavailable(name)
    if reason is not None:
        raise BaselineError(f"codec {name!r} unavailable: {reason}")
    if not paths:
        raise BaselineError("no images to evaluate")
    codec = CODECS[name]
    settings = tuple(codec.settings if settings is None else settings)
    return [
        curve_point(s, evaluate(codec.at(s), paths, progress, desc=f"{name} {s}")) for s in settings
    ]
