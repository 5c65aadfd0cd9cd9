"""Distortion metrics on 8-bit images (CompressAI's convention: per image, then averaged)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from pytorch_msssim import ms_ssim as _ms_ssim

# pytorch-msssim's 5 scales with an 11-tap window need a short side above (11 - 1) * 2**4
MS_SSIM_MIN_SIDE = 161


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = float(np.mean((as_array(a) - as_array(b)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ms_ssim(a: Image.Image, b: Image.Image) -> float | None:
    if min(a.size) < MS_SSIM_MIN_SIDE:
        return None
    ta, tb = (torch.from_numpy(as_array(im)).permute(2, 0, 1)[None].float() for im in (a, b))
    return float(_ms_ssim(ta, tb, data_range=255.0))


def bits_per_pixel(num_bytes: int, image: Image.Image) -> float:
    return num_bytes * 8.0 / (image.width * image.height)
