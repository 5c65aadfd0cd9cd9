"""Odd inputs: every image mode Pillow hands us either codes correctly or fails clearly."""

import io

import numpy as np
import pytest
from conftest import photo, tiny_model
from PIL import Image

from dqcodec.codec import Codec
from dqcodec.errors import DQError
from dqcodec.image_io import open_image, split_alpha


@pytest.fixture(scope="module")
def codec():
    return Codec(tiny_model(0))


def roundtrip(codec, image):
    return codec.decode(codec.encode(image))


def save(tmp_path, image, name, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


def test_palette_image(codec, tmp_path):
    image = photo(40, 30).quantize(16)
    out = roundtrip(codec, open_image(save(tmp_path, image, "p.png")))
    assert out.mode == "RGB" and out.size == (40, 30)


def test_palette_with_transparency_keeps_alpha(codec, tmp_path):
    image = photo(40, 30).quantize(16)
    image.info["transparency"] = 0
    path = save(tmp_path, image, "pt.png", transparency=0)
    original = open_image(path).convert("RGBA")
    out = roundtrip(codec, open_image(path))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(original.getchannel("A")))


def test_16_bit_grey_png_is_scaled_not_clipped(codec, tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    path = save(tmp_path, Image.fromarray(ramp), "g16.png")
    loaded = open_image(path)
    assert loaded.mode.startswith("I")
    rgb, alpha, mode = split_alpha(loaded)
    assert mode == "L" and alpha is None
    # the full 16-bit range maps onto 0..255; a clipping conversion would saturate at 255
    assert np.array_equal(np.asarray(rgb)[..., 0], np.round(ramp / 257.0).astype(np.uint8))
    out = roundtrip(codec, loaded)
    assert out.mode == "L" and out.size == (64, 48)


def test_cmyk_jpeg(codec, tmp_path):
    path = save(tmp_path, photo(48, 40).convert("CMYK"), "c.jpg", quality=95)
    out = roundtrip(codec, open_image(path))
    assert out.mode == "RGB" and out.size == (48, 40)


def test_exif_orientation_is_applied(tmp_path):
    image = photo(60, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = save(tmp_path, image, "r.jpg", exif=exif, quality=95)
    assert open_image(path).size == (20, 60)


@pytest.mark.parametrize("size", [(1, 1), (1, 200), (200, 1), (65, 129)])
def test_awkward_sizes(codec, size):
    image = photo(*size)
    out = roundtrip(codec, image)
    assert out.size == image.size


def test_not_an_image_and_empty_file(tmp_path):
    (tmp_path / "t.png").write_text("hello")
    (tmp_path / "e.png").write_bytes(b"")
    for name in ("t.png", "e.png"):
        with pytest.raises(DQError, match="not a readable image"):
            open_image(tmp_path / name)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = save(tmp_path, Image.new("RGB", (300, 300)), "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 300x300 > 2x the limit: a bomb
    with pytest.raises(DQError, match="too large"):
        open_image(path)


def test_truncated_png_is_an_error(tmp_path):
    buf = io.BytesIO()
    photo(64, 64).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DQError):
        open_image(tmp_path / "cut.png")
