import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dqcodec.cli import main
from dqcodec.codec import Codec
from dqcodec.errors import DQError
from dqcodec.image_io import to_tensor
from dqcodec.testing import photo, tiny_variable_rate_model
from dqcodec.training.trainer import deepened_prior
from dqcodec.zoo import read_model_file, save_model


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def variable_rate_file(tmp_path):
    path = tmp_path / "vr.safetensors"
    save_model(tiny_variable_rate_model(3), path)
    return path


def test_a_deepened_prior_codes_exactly_like_the_old_one():
    model = tiny_variable_rate_model(3)
    deeper = deepened_prior(model, kernel=3, blocks=1, free_logits=True).eval()
    assert sum(p.numel() for p in deeper.parameters()) > sum(p.numel() for p in model.parameters())
    x = to_tensor(photo(192, 128, 4))
    for point in range(3):
        assert (
            deeper.compress(x, point=point)["strings"] == model.compress(x, point=point)["strings"]
        )


def test_a_prior_can_only_grow():
    deeper = deepened_prior(tiny_variable_rate_model(3), kernel=3, blocks=1, free_logits=True)
    for kernel, blocks, free in ((1, 1, True), (3, 0, True), (3, 1, False), (4, 1, True)):
        with pytest.raises(DQError):
            deepened_prior(deeper, kernel, blocks, free)


def test_information_of_assigned_codes_is_what_the_coder_counts():
    model = tiny_variable_rate_model(3)
    x = to_tensor(photo(128, 128, 5))
    features = model.analyse(x)
    for p in range(3):
        codes = model.assign_codes(features, p)
        coded = model.compress(x, point=p)
        assert torch.equal(coded["indices"]["bottom"], codes["bottom"])
        assert torch.equal(coded["indices"]["top"], codes["top"])
        point = torch.tensor([p])
        ones = torch.ones(1, 1, *codes["top"].shape[-2:])
        with torch.no_grad():
            bits = model.bottom.information(
                codes["bottom"], codes["cond"], point
            ) + model.top.information(codes["top"], ones, point)
        assert float(bits) == pytest.approx(coded["information_bits"], rel=1e-4)


def test_fit_prior_changes_only_the_bottom_prior_and_round_trips(
    tmp_path, training_photos, variable_rate_file
):
    out = tmp_path / "fit"
    r = run(
        "fit-prior",
        "--init",
        variable_rate_file,
        "--data",
        training_photos,
        "--out",
        out,
        "--kernel",
        3,
        "--blocks",
        1,
        "--free-logits",
        "--steps",
        20,
        "--val-count",
        2,
        "--window",
        12,
    )
    assert r.exit_code == 0, r.output
    assert "held-out bpp at the start" in r.output and "step 20: held-out bpp" in r.output
    exported = tmp_path / "fitted.safetensors"
    assert (
        run("export", out / "checkpoint.pt", "-o", exported, "--precision", "fp32").exit_code == 0
    )
    fitted, start = read_model_file(exported), read_model_file(variable_rate_file)
    config = fitted.config
    assert (config.prior_kernel, config.prior_blocks, config.prior_free_logits) == (3, 1, True)
    before, after = start.state_dict(), fitted.state_dict()
    for key, value in before.items():
        if not key.startswith("bottom.prior."):
            assert torch.equal(value, after[key]), key
    assert not torch.equal(before["bottom.prior.code_bias"], after["bottom.prior.code_bias"])
    # the top prior keeps computing what it did: its new layers' outputs stay zero
    assert not after["top.prior.contexts.0.blocks.0.3.weight"].any()
    codec = Codec(fitted, rate_point=1)
    image = photo(150, 90, 6)
    data = codec.encode(image)
    assert np.array_equal(
        np.asarray(codec.decode(data)), np.asarray(Codec(fitted, rate_point=1).decode(data))
    )
    assert codec.decode(data).size == image.size


def test_fit_prior_refuses_an_even_kernel(tmp_path, training_photos, variable_rate_file):
    r = run(
        "fit-prior",
        "--init",
        variable_rate_file,
        "--data",
        training_photos,
        "--out",
        tmp_path / "fit",
        "--kernel",
        2,
    )
    assert r.exit_code != 0 and "kernel must be odd" in r.output


def test_fit_prior_refuses_a_window_no_wider_than_the_priors_view(
    tmp_path, training_photos, variable_rate_file
):
    r = run(
        "fit-prior",
        "--init",
        variable_rate_file,
        "--data",
        training_photos,
        "--out",
        tmp_path / "fit",
        "--kernel",
        3,
        "--blocks",
        1,
        "--window",
        8,
    )
    assert r.exit_code != 0 and "must be wider than twice the prior's view (4)" in r.output


def test_window_positions_count_only_where_they_see_the_whole_photo():
    from dqcodec.models.config import ModelConfig
    from dqcodec.training.prior_fitting import context_radius, window_weights

    assert context_radius(ModelConfig(prior_kernel=3, prior_blocks=1)) == 4
    assert context_radius(ModelConfig()) == 2
    corner = window_weights(32, 24, 0, 0, 12, 4)  # the photo's top-left corner: two edges are real
    assert corner[:8, :8].all() and not corner[8:].any() and not corner[:, 8:].any()
    inside = window_weights(32, 24, 8, 4, 12, 4)  # cut on all four sides
    assert inside.sum() == 16 and inside[4:8, 4:8].all()
    whole = window_weights(12, 12, 0, 0, 12, 4)
    assert whole.all()


def test_window_bits_match_the_whole_photo_where_they_count():
    """The prior's bits at a weighted-in position of a window equal that position's bits in
    the whole photo (the reason for the weights)."""
    from dqcodec.training.prior_fitting import context_radius, window_weights

    model = deepened_prior(tiny_variable_rate_model(3), kernel=3, blocks=1)
    with torch.no_grad():  # make the new layers matter
        for name, p in model.named_parameters():
            if ".blocks." in name:
                p.normal_(0, 0.1)
    x = to_tensor(photo(384, 256, 8))
    codes = model.assign_codes(model.analyse(x), 1)
    point = torch.tensor([1])
    margin = context_radius(model.config)
    h, w = codes["bottom"].shape[-2:]
    y, x0, s = 4, 4, 12
    weights = window_weights(h, w, y, x0, s, margin)
    whole_weights = torch.zeros(1, h, w)
    whole_weights[0, y : y + s, x0 : x0 + s] = weights
    with torch.no_grad():
        window = model.bottom.information(
            codes["bottom"][..., y : y + s, x0 : x0 + s],
            codes["cond"][..., y : y + s, x0 : x0 + s],
            point,
            weights[None],
        )
        whole = model.bottom.information(codes["bottom"], codes["cond"], point, whole_weights)
        cut = model.bottom.information(
            codes["bottom"][..., y : y + s, x0 : x0 + s],
            codes["cond"][..., y : y + s, x0 : x0 + s],
            point,
        )
        every = torch.zeros(1, h, w)
        every[0, y : y + s, x0 : x0 + s] = 1
        same_in_whole = model.bottom.information(codes["bottom"], codes["cond"], point, every)
    agreement = abs(float(window) - float(whole))
    assert agreement < 1e-4 * float(whole)
    # without the weights, the cut edges disagree far beyond rounding
    assert abs(float(cut) - float(same_in_whole)) > 100 * max(agreement, 1e-3)


@pytest.mark.parametrize("held_out, written", [((1.0, 2.0), False), ((1.0, 0.5), True)])
def test_fit_prior_writes_best_only_when_it_beats_the_start(
    tmp_path, training_photos, variable_rate_file, monkeypatch, held_out, written
):
    from dqcodec.training import prior_fitting

    rates = iter(held_out)  # the start's validation, then step 10's
    monkeypatch.setattr(prior_fitting, "validation_bpp", lambda model, photos: [next(rates)] * 3)
    opts = prior_fitting.PriorFitOptions(
        data=training_photos,
        out=tmp_path / "fit",
        init=variable_rate_file,
        steps=10,
        val_every=10,
        val_count=2,
        window=12,
    )
    messages = []
    best = prior_fitting.fit_prior(opts, log=messages.append)
    assert (tmp_path / "fit" / "best.pt").exists() == written
    assert (best is not None) == written
    assert ("no validation beat the starting prior" in messages[-1]) != written


def _fit_options(tmp_path, photos, init, codes_file, out="fit"):
    from dqcodec.training.prior_fitting import PriorFitOptions

    return PriorFitOptions(
        data=photos,
        out=tmp_path / out,
        init=init,
        steps=2,
        val_every=2,
        val_count=2,
        window=12,
        codes_file=codes_file,
    )


def test_saved_codes_are_read_back_instead_of_assigned_again(
    tmp_path, training_photos, variable_rate_file, monkeypatch
):
    from dqcodec.training import prior_fitting

    codes_file = tmp_path / "codes.safetensors"
    first = []
    prior_fitting.fit_prior(
        _fit_options(tmp_path, training_photos, variable_rate_file, codes_file), log=first.append
    )
    assert codes_file.exists() and not any("codes read from" in m for m in first)

    def must_not_assign(*args):
        raise AssertionError("codes assigned again")

    monkeypatch.setattr(prior_fitting, "cache_codes", must_not_assign)
    r = run(
        "fit-prior",
        "--init",
        variable_rate_file,
        "--data",
        training_photos,
        "--out",
        tmp_path / "fit2",
        "--steps",
        2,
        "--val-count",
        2,
        "--window",
        12,
        "--codes",
        codes_file,
    )
    assert r.exit_code == 0, r.output
    assert f"codes read from {codes_file}" in r.output
    # the start of both fits saw the same codes, so the same held-out bpp
    start = [m for m in first if "at the start" in m]
    assert len(start) == 1 and start[0] in r.output


@pytest.mark.parametrize("spoil", ["other weights", "other photos", "not a codes file"])
def test_codes_of_other_weights_or_photos_are_assigned_again(
    tmp_path, training_photos, variable_rate_file, spoil
):
    from dqcodec.training import prior_fitting

    codes_file = tmp_path / "codes.safetensors"
    init = variable_rate_file
    prior_fitting.fit_prior(
        _fit_options(tmp_path, training_photos, init, codes_file), log=lambda m: None
    )
    if spoil == "other weights":
        init = tmp_path / "other.safetensors"
        save_model(tiny_variable_rate_model(4), init)
    elif spoil == "other photos":
        photo(200, 208, 9).save(training_photos / "9.png")
    else:
        codes_file.write_bytes(b"not safetensors")
    messages = []
    prior_fitting.fit_prior(
        _fit_options(tmp_path, training_photos, init, codes_file, "fit2"), log=messages.append
    )
    assert not any("codes read from" in m for m in messages)
    assert any("assigning them again" in m for m in messages)
    # and the file now holds the new codes
    again = []
    prior_fitting.fit_prior(
        _fit_options(tmp_path, training_photos, init, codes_file, "fit3"), log=again.append
    )
    assert any("codes read from" in m for m in again)
