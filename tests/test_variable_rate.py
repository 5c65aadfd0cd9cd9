"""Variable-rate models: rate points with their own gains and prior embedding, one file."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import photo

from dqcodec.codec import Codec, load_codec
from dqcodec.container import DQFile
from dqcodec.errors import DQError
from dqcodec.image_io import to_tensor
from dqcodec.models.dq import DQModel, pad_to_stride
from dqcodec.testing import tiny_model, tiny_variable_rate_model
from dqcodec.training.trainer import (
    TrainOptions,
    initialised_model,
    parse_lambdas,
    single_rate_model,
)
from dqcodec.zoo import read_model_file, save_model


@pytest.fixture(scope="module")
def model():
    return tiny_variable_rate_model(0)


def test_each_rate_point_round_trips_and_is_recorded(model):
    image = photo(100, 70, 3)
    pixels = []
    for point in range(3):
        codec = Codec(model, rate_point=point)
        data = codec.encode(image)
        assert DQFile.from_bytes(data).rate_point == point
        decoded = np.asarray(codec.decode(data))
        # any codec of the same model decodes it: the point comes from the file
        assert np.array_equal(np.asarray(Codec(model, rate_point=2 - point).decode(data)), decoded)
        pixels.append(decoded)
    assert not np.array_equal(pixels[0], pixels[2])


def test_a_smaller_gain_quantizes_more_coarsely(model):
    x = pad_to_stride(to_tensor(photo(100, 70, 3)), 64)
    with torch.inference_mode():
        distinct = [
            model.compress(x, None, p)["indices"]["bottom"].unique().numel() for p in range(3)
        ]
    assert distinct[0] < distinct[1] < distinct[2]


def test_default_rate_point_is_the_highest(model):
    assert Codec(model).rate_point == 2
    assert Codec(tiny_model(0)).rate_point == 0


def test_rate_point_out_of_range_is_refused(model):
    with pytest.raises(DQError, match="rate point 3 does not exist"):
        Codec(model, rate_point=3)
    with pytest.raises(DQError, match="rate point 1 does not exist"):
        Codec(tiny_model(0), rate_point=1)


def test_file_naming_a_missing_rate_point_is_refused(model):
    data = Codec(model, rate_point=1).encode(photo(40, 40))
    forged = DQFile.from_bytes(data)
    bad = dataclasses.replace(forged, rate_point=7).to_bytes()
    with pytest.raises(DQError, match="rate point 7"):
        Codec(model).decode(bad)


def test_saved_variable_rate_model_keeps_its_points(model, tmp_path):
    path = tmp_path / "vr.safetensors"
    save_model(model, path, "fp32")
    loaded = read_model_file(path)
    assert loaded.config.lambdas == (0.001, 0.01, 0.1)
    image = photo(64, 64, 1)
    for point in range(3):
        assert Codec(loaded, rate_point=point).encode(image) == Codec(
            model, rate_point=point
        ).encode(image)
    assert load_codec(path=path, rate_point=0).rate_point == 0


def test_widening_a_single_rate_model_keeps_its_highest_point(tmp_path):
    source = tiny_model(0)
    path = tmp_path / "single.safetensors"
    save_model(source, path, "fp32")
    opts = TrainOptions(data=tmp_path, out=tmp_path / "run", init=path, init_lambdas=(0.001, 0.01))
    widened = initialised_model(opts)
    assert widened.config.lambdas == (0.001, 0.01)
    gains = widened.bottom_gain.detach().exp()
    assert torch.allclose(gains[0], torch.full_like(gains[0], 0.1**0.25))
    assert torch.equal(gains[1], torch.ones_like(gains[1]))
    for level in (widened.top, widened.bottom):  # one code bias per point, each the source's
        assert level.prior.code_bias.shape[0] == 2
    assert torch.equal(widened.bottom.prior.code_bias[0], source.bottom.prior.code_bias)
    x = torch.rand(1, 3, 64, 64)
    widened.eval()
    with torch.no_grad():
        assert torch.equal(widened(x, 1)["x_hat"], source(x)["x_hat"])


@pytest.mark.parametrize("point", [0, 1])
def test_one_rate_point_becomes_a_single_rate_model_that_codes_alike(point):
    source = tiny_variable_rate_model(0)
    with torch.no_grad():  # per-point prior parameters that matter, and large encoder biases
        for level in (source.top, source.bottom):
            level.prior.point_embedding.normal_(0, 1)
            level.prior.code_bias.normal_(0, 1)
        for encoder in (source.top_a[-1], source.bottom_a):
            encoder.bias.normal_(0, 3)
    single = single_rate_model(source, point).eval()
    assert single.config.rate_points == 1 and single.config.lmbda == source.config.lambdas[point]
    x = pad_to_stride(to_tensor(photo(100, 70, 3)), 64)
    with torch.no_grad():
        expected, got = source.compress(x, None, point), single.compress(x)
        for level in ("top", "bottom"):
            assert torch.equal(got["indices"][level], expected["indices"][level])
        assert got["information_bits"] == pytest.approx(expected["information_bits"], rel=1e-5)
        decoded = single.decompress(got["strings"], got["shape"])["x_hat"]
        reference = source.decompress(expected["strings"], expected["shape"], point)["x_hat"]
    assert torch.allclose(decoded, reference, atol=1e-5)


def test_only_a_variable_rate_model_gives_up_a_rate_point(tmp_path):
    from test_cli import run

    with pytest.raises(DQError, match="variable-rate"):
        single_rate_model(tiny_model(0), 0)
    with pytest.raises(DQError, match="0..2"):
        single_rate_model(tiny_variable_rate_model(0), 3)
    r = run("train", "--data", tmp_path, "--out", tmp_path / "run", "--init-point", 0)
    assert r.exit_code != 0 and "--init-point needs --init" in r.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text", ["0.01", "0.1,0.01", "0.01,0.01", "0,0.1", "a,b"])
def test_bad_lambda_lists_are_refused(text):
    with pytest.raises(DQError, match="--lambdas"):
        parse_lambdas(text)


def test_cli_trains_encodes_and_evaluates_a_variable_rate_model(tmp_path, training_photos):
    from test_cli import run

    out = tmp_path / "run"
    r = run(
        "train",
        "--data",
        training_photos,
        "--out",
        out,
        "--width",
        8,
        "--groups",
        4,
        "--codebook-size",
        4,
        "--steps",
        2,
        "--lambdas",
        "0.001,0.01,0.1",
        "--stages",
        "64x2:1",
    )
    assert r.exit_code == 0, r.output
    assert "val bpp" in r.output and r.output.count("psnr") >= 3  # every point validated
    exported = tmp_path / "vr.safetensors"
    assert run("export", out / "best.pt", "-o", exported).exit_code == 0
    src = tmp_path / "in.png"
    photo(64, 64).save(src)
    assert (
        run(
            "encode", src, "-o", tmp_path / "a.dq", "--model", exported, "--rate-point", 1
        ).exit_code
        == 0
    )
    assert "rate point 1" in run("info", tmp_path / "a.dq").output
    r = run("eval", "--data-dir", training_photos, "--model", exported, "--no-progress")
    assert r.exit_code == 0, r.output
    assert all(f"p{p}" in r.output for p in range(3))


def test_cli_rate_point_needs_a_model_file(tmp_path):
    from test_cli import run

    src = tmp_path / "in.png"
    photo(32, 32).save(src)
    r = run("encode", src, "-o", tmp_path / "a.dq", "--rate-point", 1)
    assert r.exit_code != 0 and "--rate-point needs --model" in r.output
    assert not (tmp_path / "a.dq").exists()


def test_bf16_training_precision_is_resolved_or_refused():
    from dqcodec.training.trainer import resolve_autocast

    assert resolve_autocast("fp32", torch.device("cpu")) is False
    assert resolve_autocast("bf16", torch.device("cpu")) is True
    with pytest.raises(DQError, match="unknown precision"):
        resolve_autocast("fp8", torch.device("cpu"))


def test_training_leaves_the_gains_where_they_start(tmp_path, training_photos):
    from dqcodec.testing import TINY
    from dqcodec.training.trainer import model_from_checkpoint, train

    config = dataclasses.replace(TINY, lambdas=(0.001, 0.016))
    opts = TrainOptions(
        data=training_photos,
        out=tmp_path / "run",
        steps=3,
        config=config,
        warmup=1,
        val_every=3,
        checkpoint_every=3,
    )
    train(opts, log=lambda m: None)
    trained = model_from_checkpoint(tmp_path / "run" / "best.pt")
    fresh = DQModel(config)
    assert torch.equal(trained.bottom_gain, fresh.bottom_gain)
    assert torch.allclose(fresh.bottom_gain.exp()[0], torch.full((8,), 0.5))  # (1/16)^(1/4)
    assert not torch.equal(trained.bottom.prior.point_embedding, fresh.bottom.prior.point_embedding)
