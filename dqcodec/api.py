"""The Python API: encode(image) -> bytes, decode(bytes) -> PIL image."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from .codec import Codec, codec_for_file, load_codec


def load_model(quality: int | None = None, path: str | Path | None = None) -> Codec:
    """A shipped model by quality level (default: the middle one), or a model file."""
    return load_codec(quality, path)


def encode(image: Image.Image | str | Path, quality: int | None = None,
           model: str | Path | None = None, effort: int = 0) -> bytes:
    """effort 1 searches for better codes (slower encoding, same decoding)."""
    return load_codec(quality, model).encode(image, effort)


def decode(data: bytes, model: str | Path | None = None) -> Image.Image:
    return codec_for_file(data, model).decode(data)
