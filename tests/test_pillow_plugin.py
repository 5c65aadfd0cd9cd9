"""The Pillow plugin: .dq files through Pillow's own API after `import dqcodec`."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import photo
from PIL import Image

import dqcodec  # noqa: F401  (registers the plugin)
from dqcodec.codec import load_codec


def test_open_reads_the_header_and_load_decodes(tmp_path):
    image = photo(96, 64)
    data = load_codec(2).encode(image, effort=0)
    path = tmp_path / "a.dq"
    path.write_bytes(data)
    with Image.open(path) as opened:
        assert (opened.format, opened.size, opened.mode) == ("DQ", (96, 64), "RGB")
        opened.load()
        pixels = np.asarray(opened)
    assert np.array_equal(pixels, np.asarray(dqcodec.decode(data)))
    assert Image.MIME["DQ"] == "image/x-dq" and Image.registered_extensions()[".dq"] == "DQ"


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_save_encodes_at_a_quality_level(tmp_path, mode):
    image = photo(80, 48).convert(mode)
    image.save(tmp_path / "b.dq", quality=2, effort=0)
    assert (tmp_path / "b.dq").read_bytes() == load_codec(2).encode(image, effort=0)
    buffer = io.BytesIO()
    image.save(buffer, format="DQ", quality=2, effort=0)
    reopened = Image.open(io.BytesIO(buffer.getvalue()))
    assert reopened.mode == mode and reopened.info["quality"] == 2
    reopened.load()


def test_decompression_bomb_limit_applies(tmp_path, monkeypatch):
    path = tmp_path / "c.dq"
    path.write_bytes(load_codec(2).encode(photo(64, 64), effort=0))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)


def test_other_files_are_not_taken_and_corrupt_ones_fail_cleanly(tmp_path):
    png = tmp_path / "d.png"
    photo(16, 16).save(png)
    assert Image.open(png).format == "PNG"
    bad = bytearray(load_codec(2).encode(photo(64, 64), effort=0))
    bad[-1] ^= 1
    (tmp_path / "e.dq").write_bytes(bytes(bad))
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(tmp_path / "e.dq")
