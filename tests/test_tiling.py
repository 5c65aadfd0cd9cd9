"""Tiled analysis/synthesis against the untiled transforms of a random-weight DQModel.

With the overlap at least the transforms' receptive field (2 latents for g_s, 32 pixels for
g_a) the tiled result equals the untiled one up to float rounding: measured max |diff| = 0
with one thread and <= 3.6e-7 with two (output scale ~0.5), i.e. PSNR > 150 dB. The bound
below (1e-5) leaves room for other convolution kernels; one overlap step less is off by ~0.1.
"""

import math
import threading

import pytest
import torch

from dqcodec.models import tiling
from dqcodec.models.config import ModelConfig
from dqcodec.models.dq import DQModel
from dqcodec.models.tiling import (
    receptive_radius,
    required_overlap,
    tile_spans,
    tiled_analysis,
    tiled_synthesis,
)

BOUND = 1e-5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DQModel().eval()  # default config, random weights


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij"
    )
    x = torch.stack(
        [0.5 + 0.3 * torch.sin(6 * xx + 2 * yy), 0.5 + 0.3 * torch.cos(5 * yy), 0.4 + 0.3 * xx * yy]
    )[None]
    return (x + 0.03 * torch.randn(1, 3, height, width, generator=gen)).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a - b).double().pow(2).mean().item()
    peak = (b.max() - b.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def test_tile_spans_partition():
    for length in (1, 5, 16, 17, 33, 135, 240):
        for tile in (1, 4, 32):
            for overlap in (0, 2, 4):
                spans = tile_spans(length, tile, overlap)
                cores = [(a, b) for _, _, a, b in spans]
                assert cores[0][0] == 0 and cores[-1][1] == length
                assert all(b0 == a1 for (_, b0), (a1, _) in zip(cores, cores[1:]))
                assert all(0 < b - a <= tile for a, b in cores)
                assert all(
                    max(0, a - overlap) == s and min(length, b + overlap) == e
                    for s, e, a, b in spans
                )
                assert len(cores) == -(-length // tile)  # as few tiles as `tile` allows
                sizes = [b - a for a, b in cores]
                assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_tile_spans_examples():
    # 10 = 4 + 3 + 3 (near-equal cores, the longer first), each widened by 2 and clipped
    assert tile_spans(10, 4, 2) == [(0, 6, 0, 4), (2, 9, 4, 7), (5, 10, 7, 10)]
    assert tile_spans(9, 4, 0) == [(0, 3, 0, 3), (3, 6, 3, 6), (6, 9, 6, 9)]
    assert tile_spans(5, 32, 4) == [(0, 5, 0, 5)]
    assert tile_spans(0, 4, 2) == []
    for tile, overlap in ((0, 2), (4, -1)):
        with pytest.raises(ValueError):
            tile_spans(10, tile, overlap)


def test_synthesis_tiled_matches_untiled(model):
    torch.manual_seed(1)
    c = model.config.bottom.channels + model.config.width
    y = torch.randn(1, c, 256 // 16, 320 // 16)  # 16 x 20 latents
    with torch.inference_mode():
        full = model.g_s(y)
        tiled = tiled_synthesis(model.g_s, y, tile=4, overlap=4)
        ragged = tiled_synthesis(model.g_s, y[:, :, :15, :19], tile=4, overlap=2)  # uneven cores
        ragged_full = model.g_s(y[:, :, :15, :19])
        single = tiled_synthesis(model.g_s, y)  # default tile=32 > 20: one tile
        minimal = tiled_synthesis(model.g_s, y, tile=4, overlap=2)  # the default overlap
        short = tiled_synthesis(model.g_s, y, tile=4, overlap=1)
    assert tiled.shape == full.shape == (1, 3, 256, 320)
    diff = (tiled - full).abs().max().item()
    print(
        f"\ng_s tile=4 overlap=4: max|diff| {diff:.3g}, PSNR {psnr(tiled, full):.1f} dB "
        f"(too-small overlap=1: max|diff| {(short - full).abs().max().item():.3g}, "
        f"PSNR {psnr(short, full):.1f} dB)"
    )
    assert diff < BOUND
    assert (ragged - ragged_full).abs().max().item() < BOUND
    assert (minimal - full).abs().max().item() < BOUND
    assert torch.equal(single, full)
    assert (short - full).abs().max().item() > 100 * BOUND  # the test can see a seam


def test_analysis_tiled_matches_untiled(model):
    x = smooth_image(256, 320)
    with torch.inference_mode():
        full = model.g_a(x)
        tiled = tiled_analysis(model.g_a, x, tile=64, overlap=64)
        single = tiled_analysis(model.g_a, x)  # default tile=512: one tile
        minimal = tiled_analysis(model.g_a, x, tile=64, overlap=32)  # the default overlap
        short = tiled_analysis(model.g_a, x, tile=64, overlap=16)
        odd = smooth_image(250, 303, seed=2)  # not a multiple of the stride
        odd_tiled = tiled_analysis(model.g_a, odd, tile=48, overlap=32)
        odd_full = model.g_a(odd)
    assert tiled.shape == full.shape == (1, model.config.width, 16, 20)
    diff = (tiled - full).abs().max().item()
    print(
        f"\ng_a tile=64 overlap=64: max|diff| {diff:.3g} (|h| max {full.abs().max().item():.3g}), "
        f"PSNR {psnr(tiled, full):.1f} dB (too-small overlap=16: max|diff| "
        f"{(short - full).abs().max().item():.3g}, PSNR {psnr(short, full):.1f} dB)"
    )
    assert diff < BOUND
    assert odd_tiled.shape == odd_full.shape == (1, model.config.width, 16, 19)
    assert (odd_tiled - odd_full).abs().max().item() < BOUND
    assert (minimal - full).abs().max().item() < BOUND
    assert torch.equal(single, full)
    assert (short - full).abs().max().item() > 100 * BOUND


def test_default_overlaps_cover_the_receptive_fields(model):
    """Guards the defaults if the transforms change (bigger kernels, more layers)."""
    stride = model.config.bottom_stride
    assert receptive_radius(model.g_s) == 1.875 and receptive_radius(model.g_a) == 30
    assert required_overlap(model.g_s) <= _default(tiled_synthesis, "overlap")
    assert required_overlap(model.g_a, stride) <= _default(tiled_analysis, "overlap")
    assert _default(tiled_synthesis, "stride") == _default(tiled_analysis, "stride") == stride
    with pytest.raises(ValueError):
        receptive_radius(
            torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3), torch.nn.Upsample(scale_factor=2))
        )


def _default(fn, name):
    import inspect

    return inspect.signature(fn).parameters[name].default


def test_tiled_works_with_autograd(model):
    y = torch.randn(1, model.config.bottom.channels + model.config.width, 6, 5, requires_grad=True)
    tiled_synthesis(model.g_s, y, tile=2, overlap=2).sum().backward()
    assert y.grad is not None and y.grad.shape == y.shape


def test_tiles_side_by_side_give_the_tiles_in_turn_exactly(model, monkeypatch):
    """Beside a busy process (tile_workers > 1) the tiles run on threads of their own, each
    under the caller's inference mode and on one torch thread: the same values as the
    tiles in turn on one thread, and every core written once."""
    torch.manual_seed(2)
    y = torch.randn(1, model.config.bottom.channels + model.config.width, 12, 16)
    calls = []

    def g_s(part):
        calls.append((threading.current_thread().name, torch.get_num_threads()))
        assert torch.is_inference_mode_enabled()
        return model.g_s(part)

    written = torch.zeros(1, 1, 12 * 16, 16 * 16)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            in_turn = tiled_synthesis(model.g_s, y, tile=4, overlap=2)
        torch.set_num_threads(2)
        monkeypatch.setattr(tiling, "tile_workers", lambda: 2)
        with torch.inference_mode():
            side_by_side = tiled_synthesis(g_s, y, tile=4, overlap=2)

            def write(core, top, left):
                written[..., top : top + core.shape[-2], left : left + core.shape[-1]] += 1

            assert tiled_synthesis(g_s, y, tile=4, overlap=2, write=write) is None
        assert torch.get_num_threads() == 2  # the caller's count is back
    finally:
        torch.set_num_threads(before)
    assert torch.equal(side_by_side, in_turn)
    assert torch.equal(written, torch.ones_like(written))
    assert len(calls) == 2 * 12 and {count for _, count in calls} == {1}
    assert any(name.startswith("dqcodec") for name, _ in calls)


def test_analysis_rejects_off_grid_tiles(model):
    with pytest.raises(ValueError):
        tiled_analysis(model.g_a, torch.zeros(1, 3, 64, 64), tile=40, overlap=16)


def test_tiled_model_transforms_with_linear_skip():
    """The model's full transforms (DQModel.analyse / synthesise, with the block-linear skip
    paths) tile exactly too: the skips are stride-16 patch (de)convolutions on the grid."""
    torch.manual_seed(0)
    model = DQModel(ModelConfig(linear_skip=True)).eval()
    stride = model.config.bottom_stride
    assert required_overlap(model.skip_s) <= _default(tiled_synthesis, "overlap")
    assert required_overlap(model.skip_a, stride) <= _default(tiled_analysis, "overlap")
    x = smooth_image(192, 256, seed=3)
    with torch.inference_mode():
        h = model.analyse(x)
        h_tiled = tiled_analysis(model.analyse, x, tile=64, overlap=32)
        y = torch.randn(1, model.config.bottom.channels + model.config.width, *h.shape[-2:])
        x_hat = model.synthesise(y)
        x_tiled = tiled_synthesis(model.synthesise, y, tile=4, overlap=2)
    assert (h_tiled - h).abs().max().item() < BOUND
    assert (x_tiled - x_hat).abs().max().item() < BOUND
