"""Rate-distortion evaluation of dqcodec on a folder of images, from the real bitstreams."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .codec import Codec
from .image_io import open_image
from .metrics import bits_per_pixel, ms_ssim, psnr
from .refinement import DEFAULT_EFFORT


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
    entropy_bpp: float  # the prior's cross-entropy of the coded indices


def evaluate_image(codec: Codec, path: Path, effort: int = DEFAULT_EFFORT) -> ImageResult:
    image = open_image(path)
    start = time.perf_counter()
    encoded = codec.encode_image(image, effort)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    decoded = codec.decode(encoded.data)
    decode_s = time.perf_counter() - start
    return ImageResult(
        name=path.name, width=image.width, height=image.height, bytes=len(encoded.data),
        bpp=bits_per_pixel(len(encoded.data), image), psnr=psnr(image, decoded),
        ms_ssim=ms_ssim(image, decoded), encode_s=encode_s, decode_s=decode_s,
        entropy_bpp=encoded.information_bits / (image.width * image.height),
    )


def evaluate(codec: Codec, paths: list[Path], progress: bool = True, effort: int = DEFAULT_EFFORT) -> list[ImageResult]:
    return [evaluate_image(codec, p, effort) for p in tqdm(paths, desc="dqcodec", disable=not progress)]


def summarize(results: list[ImageResult]) -> dict:
    keys = ("bpp", "psnr", "ms_ssim", "encode_s", "decode_s", "entropy_bpp")
    mean = {}
    for k in keys:
        values = [getattr(r, k) for r in results if getattr(r, k) is not None]
        mean[k] = float(np.mean(values)) if values else None
    return mean


def report(codec: Codec, dataset: str, results: list[ImageResult], effort: int = DEFAULT_EFFORT) -> dict:
    return {
        "dataset": dataset,
        "codec": {"name": "dqcodec", "quality": codec.quality, "model_id": codec.model_id.hex(),
                  "effort": effort},
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
    from .rd import bd_table, psnr_at

    pairs = rd_pairs(curves)
    at = {name: {str(b): psnr_at(c, b) for b in COMPARE_BPPS} for name, c in pairs.items()}
    bd = {f"{b} vs {a}": v for (a, b), v in bd_table(pairs, bpp_range=BD_RANGE).items()}
    return {"psnr_at_bpp": at, "bd_rate_percent": bd}
