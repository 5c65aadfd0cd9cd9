"""Image reading and writing (Pillow), and conversion to and from model tensors (torch
loads only when a tensor is made)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from dqcodec.errors import DQError

if TYPE_CHECKING:
    from torch import Tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def to_tensor(image: Image.Image) -> Tensor:
    """8-bit RGB PIL image -> (1, 3, H, W) float in [0, 1]."""
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255.0


def to_pixels(x: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] -> uint8 (clamp, round half to even)."""
    return np.rint(np.clip(x, 0, 1) * np.float32(255.0)).astype(np.uint8)


def to_image(x: Tensor) -> Image.Image:
    """(1, 3, H, W) float32 in [0, 1] -> 8-bit RGB PIL image (to_pixels)."""
    pixels = to_pixels(x[0].detach().permute(1, 2, 0).numpy())
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


class ImageError(DQError):
    pass


def open_image(path: str | Path, data: bytes | None = None) -> Image.Image:
    """Read an image fully, with its EXIF orientation applied: the file at `path`, or `data`
    (the bytes of an image file; `path` then only names it in errors)."""
    path = Path(path)
    if data is None and not path.is_file():
        raise ImageError(f"no such file: {path}")
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refused, image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from None


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(
            np.clip(np.round(array * 255.0 / peak), 0, 255).astype(np.uint8), "L"
        )
    return image.convert("L")


def split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None, str]:
    """-> (RGB image to code, alpha plane or None, container mode).

    Grey images are coded as RGB and decoded back to grey; alpha is kept losslessly.
    """
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        alpha = image.getchannel("A")
        grey = image.mode in ("LA", "La")
        rgb = image.convert("L").convert("RGB") if grey else image.convert("RGB")
        return rgb, alpha, "LA" if grey else "RGBA"
    if image.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        return _to_8bit_gray(image).convert("RGB"), None, "L"
    return image.convert("RGB"), None, "RGB"


def save_format(path: Path) -> str:
    """The Pillow format for an output path, from its extension."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ImageError(f"unknown image format for output {path} (use .png, say)")
    return fmt
