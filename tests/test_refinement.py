from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import photo, tiny_model
from PIL import Image

from dqcodec.cli import main
from dqcodec.codec import Codec, load_codec
from dqcodec.errors import DQError
from dqcodec.evaluation.metrics import psnr
from dqcodec.image_io import to_tensor
from dqcodec.models.dq import pad_to_stride
from dqcodec.models.encoder_search import DEFAULT_EFFORT, EFFORTS, Search, refine_features, windows

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "bsds500-test_100007.jpg"


@pytest.mark.parametrize(
    "shape,window,margin", [((32, 48), 48, 4), ((100, 76), 8, 4), ((4, 4), 8, 4), ((24, 60), 16, 6)]
)
def test_windows_partition_the_features_on_the_top_grid(shape, window, margin):
    covered = np.zeros(shape, dtype=int)
    for (r0, r1, cr0, cr1), (c0, c1, cc0, cc1) in windows(shape, 4, window, margin):
        assert all(v % 4 == 0 for v in (r0, r1, cr0, cr1, c0, c1, cc0, cc1))
        assert r0 <= cr0 < cr1 <= r1 and c0 <= cc0 < cc1 <= c1
        assert cr0 - r0 <= 8 and r1 - cr1 <= 8  # the margin, rounded up to whole top positions
        assert cr1 - cr0 <= max(window, 4) and cc1 - cc0 <= max(window, 4)
        covered[cr0:cr1, cc0:cc1] += 1
    assert (covered == 1).all()


def test_windows_refuse_features_off_the_top_grid():
    with pytest.raises(ValueError, match="top-level"):
        windows((10, 8), 4, 48, 4)


def _distortion(model, x, features, point=0):
    with torch.no_grad():
        x_hat = model.reconstruct_assigned(features, point).clamp(0, 1)
    return float((x_hat - x).pow(2).mean())


@pytest.mark.parametrize("window", [48, 4])  # one window; many windows with margins
@pytest.mark.parametrize("bf16", [True, False])
def test_refinement_lowers_the_distortion_of_the_assigned_codes(window, bf16, monkeypatch):
    monkeypatch.setattr("dqcodec.models.encoder_search.bf16_supported", lambda device: bf16)
    model = tiny_model(0)
    x = pad_to_stride(to_tensor(photo(128, 128, 7)), 64)
    features = model.analyse_image(x)
    refined = refine_features(model, x, features, 0, Search(5, 0.05), window=window)
    assert refined.shape == features.shape and not torch.equal(refined, features)
    assert _distortion(model, x, refined) < _distortion(model, x, features)


def test_zero_steps_return_the_features_unchanged():
    model = tiny_model(0)
    x = pad_to_stride(to_tensor(photo(64, 64, 1)), 64)
    features = model.analyse_image(x)
    assert refine_features(model, x, features, 0, Search(0, 0.0)) is features


@pytest.mark.parametrize("effort", range(1, len(EFFORTS)))
def test_effort_files_decode_in_sync_and_match_the_image_size(effort):
    codec = Codec(tiny_model(0))
    image = photo(100, 67, 3)
    plain, searched = codec.encode(image, effort=0), codec.encode(image, effort=effort)
    assert plain != searched
    decoded = codec.decode(searched)  # the index checksum would catch a desynchronised decoder
    assert decoded.size == image.size
    assert codec.encode(image, effort=effort) == searched  # refinement is deterministic


def test_search_scale_changes_the_search_only():
    model, image = tiny_model(0), photo(64, 64, 6)
    plain, scaled = Codec(model), Codec(model, search_scale=0.5)
    assert plain.encode(image, effort=0) == scaled.encode(image, effort=0)
    assert plain.encode(image, effort=1) != scaled.encode(image, effort=1)
    assert scaled.decode(scaled.encode(image, effort=1)).size == image.size


@pytest.mark.parametrize("scale", [0.0, -0.5, float("nan")])
def test_nonpositive_search_scale_is_refused(scale):
    with pytest.raises(DQError, match="search scale"):
        Codec(tiny_model(0), search_scale=scale)


def test_encoding_uses_the_default_effort():
    codec = Codec(tiny_model(0))
    image = photo(64, 64, 5)
    other = 1 if DEFAULT_EFFORT == 0 else 0
    assert (
        codec.encode(image)
        == codec.encode(image, effort=DEFAULT_EFFORT)
        != codec.encode(image, effort=other)
    )


def test_unknown_effort_is_refused():
    with pytest.raises(DQError, match="effort"):
        Codec(tiny_model(0)).encode(photo(64, 64), effort=len(EFFORTS))


@pytest.mark.parametrize("effort,gain", [(1, 0.15), (2, 0.2)])
@pytest.mark.parametrize("bf16", [True, False])  # the search's transforms in bf16 or fp32
def test_effort_raises_quality_with_the_shipped_model(effort, gain, bf16, monkeypatch):
    """The point of the search, on a real photo with the trained default level: a crop of
    the bundled sample, so that the test stays fast."""
    monkeypatch.setattr("dqcodec.models.encoder_search.bf16_supported", lambda device: bf16)
    image = Image.open(SAMPLE).convert("RGB").crop((0, 0, 256, 192))
    codec = load_codec()
    plain, searched = (codec.decode(codec.encode(image, e)) for e in (0, effort))
    assert psnr(image, searched) > psnr(image, plain) + gain


def test_cli_effort_out_of_range_is_one_line_error(tmp_path):
    src = tmp_path / "a.png"
    photo(64, 64).save(src)
    result = CliRunner().invoke(main, ["encode", str(src), "--effort", str(len(EFFORTS))])
    assert result.exit_code == 2 and "effort" in result.output.lower()
    assert not (tmp_path / "a.dq").exists()
