"""The Python API: encode(image) -> bytes, decode(bytes) -> PIL image."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from .codec import Codec, codec_for_file, load_codec
from .refinement import DEFAULT_EFFORT


def load_model(quality: int | None = None, path: str | Path | None = None) -> Codec:
    """A shipped model by quality level (default: the middle one), or a model file."""
    return load_codec(quality, path)


def encode(image: Image.Image | str | Path, quality: int | None = None,
           model: str | Path | None = None, effort: int = DEFAULT_EFFORT) -> bytes:
    """effort: how hard the encoder searches for the image's codes, 0 (none, fastest) to 2;
    decoding is the same for all."""
    return load_codec(quality, model).encode(image, effort)


def decode(data: bytes, model: str | Path | None = None) -> Image.Image:
    return codec_for_file(data, model).decode(data)
