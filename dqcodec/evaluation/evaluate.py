"""Rate-distortion evaluation from real bitstreams: one loop for dqcodec and the classic codecs.

A coder is anything with ``encode(image) -> EncodeResult`` and ``decode(data) -> image``: a dqcodec
level (`DQCoder`) or a classic codec at one setting (`classic_codecs.ClassicCodec.at`). Every
image is encoded to bytes and decoded from them, so sizes and distortions are those of the files.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from dqcodec.codec import Codec, EncodeResult
from dqcodec.errors import DQError
from dqcodec.evaluation.metrics import bits_per_pixel, ms_ssim, psnr
from dqcodec.image_io import open_image
from dqcodec.options import DEFAULT_EFFORT


class Coder(Protocol):
    def encode(self, image: Image.Image) -> EncodeResult: ...

    def decode(self, data: bytes) -> Image.Image: ...


@dataclass(frozen=True)
class DQCoder:
    """A dqcodec level with an encoder effort."""

    codec: Codec
    effort: int = DEFAULT_EFFORT

    def encode(self, image: Image.Image) -> EncodeResult:
        return self.codec.encode_image(image, self.effort)

    def decode(self, data: bytes) -> Image.Image:
        return self.codec.decode(data)


@dataclass
class ImageResult:
    name: str
    width: int
    height: int
    bytes: int
    bpp: float
    psnr: float
    ms_ssim: float | None
    encode_s: float
    decode_s: float
    entropy_bpp: float | None  # the prior's cross-entropy of the coded indices (dqcodec)


def evaluate_image(coder: Coder, name: str, image: Image.Image) -> ImageResult:
    start = time.perf_counter()
    encoded = coder.encode(image)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    decoded = coder.decode(encoded.data)
    decode_s = time.perf_counter() - start
    if decoded.size != image.size:
        raise DQError(f"{name}: decoded size {decoded.size} differs from the input's {image.size}")
    pixels = image.width * image.height
    bits = encoded.information_bits
    return ImageResult(
        name=name,
        width=image.width,
        height=image.height,
        bytes=len(encoded.data),
        bpp=bits_per_pixel(len(encoded.data), image),
        psnr=psnr(image, decoded),
        ms_ssim=ms_ssim(image, decoded),
        encode_s=encode_s,
        decode_s=decode_s,
        entropy_bpp=None if bits is None else bits / pixels,
    )


def evaluate(
    coder: Coder, paths: Sequence[Path], progress: bool = True, desc: str = "dqcodec"
) -> list[ImageResult]:
    bar = tqdm(paths, desc=desc, unit="img", file=sys.stderr, leave=False, disable=not progress)
    return [evaluate_image(coder, Path(p).name, open_image(p)) for p in bar]


def summarize(results: list[ImageResult]) -> dict:
    """Means over images (CompressAI's convention); None where no image has the figure."""
    keys = ("bpp", "psnr", "ms_ssim", "encode_s", "decode_s", "entropy_bpp")
    mean = {}
    for k in keys:
        values = [getattr(r, k) for r in results if getattr(r, k) is not None]
        mean[k] = float(np.mean(values)) if values else None
    return mean


def report(
    codec: Codec, dataset: str, results: list[ImageResult], effort: int = DEFAULT_EFFORT
) -> dict:
    return {
        "dataset": dataset,
        "codec": {
            "name": "dqcodec",
            "quality": codec.quality,
            "model_id": codec.model_id.hex(),
            "effort": effort,
        },
        "images": [asdict(r) for r in results],
        "mean": summarize(results),
    }


def curve_point(setting, results: list[ImageResult]) -> dict:
    return {"setting": setting, **summarize(results)}


COMPARE_BPPS = (0.25, 0.5, 0.75, 1.0)
BD_RANGE = (0.1, 1.5)


def rd_pairs(curves: dict[str, list[dict]]) -> dict[str, list[tuple[float, float]]]:
    """Curve points -> (bpp, PSNR) pairs, the form rd.py works on."""
    return {name: [(p["bpp"], p["psnr"]) for p in points] for name, points in curves.items()}


def compare(curves: dict[str, list[dict]]) -> dict:
    """PSNR at fixed rates and pairwise BD-rate (%) over 0.1-1.5 bpp, from measured curves."""
    from dqcodec.evaluation.rd import bd_table, psnr_at

    pairs = rd_pairs(curves)
    at = {name: {str(b): psnr_at(c, b) for b in COMPARE_BPPS} for name, c in pairs.items()}
    bd = {f"{b} vs {a}": v for (a, b), v in bd_table(pairs, bpp_range=BD_RANGE).items()}
    return {"psnr_at_bpp": at, "bd_rate_percent": bd}
