"""The Python API: encode(image) -> bytes, decode(.dq data) -> PIL image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from PIL import Image

from dqcodec.options import DEFAULT_EFFORT, DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from dqcodec.codec import Codec

ImageInput = Image.Image | str | os.PathLike
DQInput = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO


def load_model(quality: int | None = None, path: str | Path | None = None) -> Codec:
    """A shipped model by quality level (default: the middle one), or a model file."""
    from dqcodec.codec import load_codec

    return load_codec(quality, path)


def encode(
    image: ImageInput,
    quality: int | None = None,
    model: str | Path | None = None,
    effort: int = DEFAULT_EFFORT,
) -> bytes:
    """image: a PIL image or the path of an image file. effort: how hard the encoder searches
    for the image's codes, 0 (none, fastest) to 2; decoding is the same for all."""
    if not isinstance(image, (Image.Image, str, os.PathLike)):
        raise TypeError(
            f"encode takes a PIL image or a path, not {type(image).__name__}"
            + (
                " (to decode .dq data, use dqcodec.decode)"
                if isinstance(image, (bytes, bytearray))
                else ""
            )
        )
    from dqcodec.codec import load_codec

    return load_codec(quality, model).encode(image, effort)


def decode(
    data: DQInput, model: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """data: the bytes of a .dq file, its path, or a binary file object open for reading.
    Images up to 4 megapixels decode with NumPy alone (dqcodec.decoding)."""
    from dqcodec.decoding import decoder_for_file

    data = _read(data)
    return decoder_for_file(data, model).decode(data, max_pixels)


def _read(data: DQInput) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, (str, os.PathLike)):
        from dqcodec.errors import DQError

        path = Path(data)
        if not path.is_file():
            raise DQError(f"no such file: {path}")
        return path.read_bytes()
    if hasattr(data, "read"):
        try:
            content = data.read()
        except UnicodeDecodeError:
            content = None
        if isinstance(content, (bytes, bytearray)):
            return bytes(content)
        raise TypeError("decode needs a file opened in binary mode ('rb'), not text mode")
    raise TypeError(
        f"decode takes bytes, a path or a binary file object, not {type(data).__name__}"
    )
