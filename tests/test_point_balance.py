"""Balancing the rate points of a variable-rate model's loss (train --balance-points)."""

import dataclasses
import math

import pytest
import torch

from dqcodec.image_io import to_tensor
from dqcodec.testing import TINY, photo, tiny_variable_rate_model
from dqcodec.training.trainer import PointBalance, TrainOptions, rd_loss, train


def test_weights_are_equal_until_every_point_has_a_cost():
    balance = PointBalance(3)
    points = torch.tensor([0, 2, 2])
    assert torch.equal(balance.weights(points), torch.ones(3))
    balance.update(points, torch.tensor([1.0, 4.0, 6.0]))
    assert torch.equal(balance.weights(points), torch.ones(3))
    balance.update(torch.tensor([1]), torch.tensor([2.0]))
    costs = torch.tensor([1.0, 2.0, 5.0])  # point 2: the mean of its two samples
    assert torch.allclose(balance.cost, costs)
    assert torch.allclose(balance.weights(points), costs.mean() / costs[points])


def test_costs_are_running_averages():
    balance = PointBalance(2, decay=0.9, state=[1.0, 10.0])
    balance.update(torch.tensor([1, 1]), torch.tensor([20.0, 40.0]))
    assert balance.cost.tolist() == pytest.approx([1.0, 0.9 * 10 + 0.1 * 30])
    assert PointBalance(2, state=balance.state()).cost.tolist() == balance.cost.tolist()


def test_unweighted_loss_is_the_mean_rd_cost_and_weights_move_it():
    model = tiny_variable_rate_model().train()
    x = torch.cat([to_tensor(photo(64, 64, i)) for i in (1, 2)])
    points = torch.tensor([0, 2])
    lambdas = torch.tensor(model.config.point_lambdas())[points]
    out = model(x, points)
    assert torch.allclose(out["sample_bits"].sum(), sum(out["bits"].values()))
    plain = rd_loss(out, x, lambdas, commitment=0.0)
    mse = (out["x_hat"] - x).pow(2).mean((1, 2, 3))
    expected = (255**2 * lambdas * mse).mean() + sum(out["bits"].values()) / (2 * 64 * 64)
    assert float(plain["loss"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    weighted = rd_loss(out, x, lambdas, commitment=0.0, weights=torch.tensor([2.0, 0.0]))
    assert float(weighted["loss"].detach()) == pytest.approx(
        float(plain["cost"][0].detach()), rel=1e-5
    )


def test_balanced_training_records_the_point_costs(tmp_path, training_photos):
    config = dataclasses.replace(TINY, lambdas=(0.001, 0.016))
    opts = TrainOptions(
        data=training_photos,
        out=tmp_path / "run",
        steps=4,
        config=config,
        warmup=1,
        val_every=4,
        checkpoint_every=4,
        balance_points=True,
    )
    train(opts, log=lambda m: None)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    costs = state["point_cost"]
    assert len(costs) == 2 and all(math.isfinite(c) and c > 0 for c in costs)


def test_burst_trains_the_transforms_and_keeps_the_prior(tmp_path, training_photos):
    from click.testing import CliRunner

    from dqcodec.cli import main
    from dqcodec.zoo import read_model_file, save_model

    init = tmp_path / "init.safetensors"
    save_model(tiny_variable_rate_model(), init, "fp32")
    out = tmp_path / "burst.safetensors"
    args = ["burst", "--data", training_photos, "--init", init, "--minutes", "0.2"]
    args += ["--crop", "64", "--batch", "2", "--device", "cpu", "-o", out]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    before, after = read_model_file(init), read_model_file(out)
    for name, value in before.state_dict().items():
        if ".prior." in name:  # frozen: only the export's fp16 rounding
            assert torch.equal(value.half().float(), after.state_dict()[name]), name
    assert not torch.equal(before.g_s[0].weight, after.g_s[0].weight)
    assert (tmp_path / "burst.run" / "checkpoint.pt").is_file()
