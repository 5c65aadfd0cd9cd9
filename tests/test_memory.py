"""The low-memory decode path computes what the whole-image path does.

Old path: tiled_synthesis(model.synthesise, y) into a full float image, clamp, then
image_io.to_image. New path (Codec.decode): tiled_synthesis(model.synthesise_inplace, y,
write=TileWriter) with in-place, banded inverse GDNs, each tile turned into 8-bit pixels and
pasted into the image at once. Both are float32 with the same tiles, so the pixels are equal.
"""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from dqcodec.codec import Codec, TileWriter
from dqcodec.container import DQFile
from dqcodec.image_io import to_image
from dqcodec.layers import GDN
from dqcodec.models.tiling import tile_spans, tiled_synthesis
from dqcodec.testing import TINY, photo, tiny_model


@pytest.fixture(scope="module")
def codec():
    return Codec(tiny_model(0))


def old_decode(codec: Codec, data: bytes) -> np.ndarray:
    """The whole-image decode: the whole float image, then to_image."""
    dq = DQFile.from_bytes(data)
    shape = (-(-dq.height // codec.stride), -(-dq.width // codec.stride))
    with torch.inference_mode():
        latents = codec.model.decode_latents(
            [dq.top, dq.bottom], shape, dq.rate_point, codec.integer_model(dq.rate_point)
        )
        x_hat = tiled_synthesis(codec.model.synthesise, latents["y"], stride=16).clamp_(0, 1)
    return np.asarray(to_image(x_hat[..., : dq.height, : dq.width]))


@pytest.mark.parametrize("size", [(1, 1), (37, 1), (100, 67), (130, 70), (257, 129)])
def test_decode_equals_old_path(codec, size):
    image = photo(*size, seed=sum(size))
    data = codec.encode(image)
    new = np.asarray(codec.decode(data))
    assert new.shape == (size[1], size[0], 3)
    assert np.abs(new.astype(int) - old_decode(codec, data)).max() <= 1


def test_decode_equals_old_path_with_linear_skip():
    model = tiny_model(1, dataclasses.replace(TINY, linear_skip=True))
    codec = Codec(model)
    data = codec.encode(photo(150, 90, seed=5))
    assert np.abs(np.asarray(codec.decode(data)).astype(int) - old_decode(codec, data)).max() <= 1


@pytest.mark.parametrize("linear_skip", [False, True])
def test_synthesise_inplace_equals_synthesise_on_many_tiles(linear_skip):
    """Odd latent sizes, tiles of 3 latents (many tiles, ragged cores), tile by tile into an
    image, against the untiled-tile assembly of the old path."""
    model = tiny_model(2, dataclasses.replace(TINY, linear_skip=linear_skip))
    torch.manual_seed(3)
    c = model.config.bottom.channels + model.config.width
    for h, w in ((7, 5), (1, 9), (11, 13)):
        y = torch.randn(1, c, h, w).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            old = tiled_synthesis(model.synthesise, y, tile=3, overlap=2)
            new = tiled_synthesis(model.synthesise_inplace, y, tile=3, overlap=2)
            assert torch.equal(old, new)
            writer = TileWriter(16 * w - 5, 16 * h - 3)  # an image smaller than the padding
            tiled_synthesis(model.synthesise_inplace, y, tile=3, overlap=2, write=writer)
        expected = to_image(old.clamp(0, 1)[..., : 16 * h - 3, : 16 * w - 5])
        assert np.array_equal(np.asarray(writer.image), np.asarray(expected))


def test_write_cores_cover_the_output_exactly():
    """The cores handed to `write` partition the output: each pixel written once."""
    for h, w, tile in ((7, 5, 3), (1, 1, 32), (33, 40, 32), (16, 17, 4)):
        y = torch.randn(1, 2, h, w)
        hits = torch.zeros(h * 4, w * 4, dtype=torch.int32)

        def write(core, top, left, hits=hits):
            assert core.shape[:2] == (1, 2)
            hits[top : top + core.shape[-2], left : left + core.shape[-1]] += 1

        def upsample(t):
            return t.repeat_interleave(4, -2).repeat_interleave(4, -1)

        assert tiled_synthesis(upsample, y, stride=4, tile=tile, overlap=2, write=write) is None
        assert torch.equal(hits, torch.ones_like(hits))
        spans = tile_spans(h, tile, 2)
        assert [a for _, _, a, _ in spans][0] == 0 and spans[-1][3] == h


@pytest.mark.parametrize("inverse", [False, True])
def test_gdn_inplace_bands_equal_forward(inverse):
    torch.manual_seed(4)
    gdn = GDN(24, inverse=inverse).eval()
    with torch.no_grad():
        gdn.gamma.add_(0.05 * torch.rand_like(gdn.gamma))
    x = torch.randn(1, 24, 37, 29).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = gdn(x)
        for band in (1, 24 * 29, 5000, 1 << 20):
            got = gdn.forward_(x.clone(), band=band)
            assert torch.equal(got, expected)
    with pytest.raises(RuntimeError):
        gdn.train().forward_(x)


def test_decode_modes_keep_working(codec):
    rgba = photo(70, 45, seed=9).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 128))
    for image in (rgba, photo(70, 45, seed=9).convert("L")):
        decoded = codec.decode(codec.encode(image))
        assert decoded.mode == image.mode and decoded.size == image.size
