"""A short training burst from the shipped variable-rate model, sized for a few minutes of a
GPU: large batches of large crops, the photos held on the device, the transforms compiled,
every rate point weighted alike, the prior frozen (refit it afterwards on the CPU with
`dqcodec fit-prior`). `dqcodec burst` exports the result as a model file that
`dqcodec eval --model` reads as it is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dqcodec.errors import DQError
from dqcodec.training.trainer import Stage, TrainOptions, train


@dataclass(frozen=True)
class BurstRecipe:
    crop: int = 256
    batch: int = 128
    lr: float = 1.4e-4
    warmup: int = 150
    val_every: int = 500


def default_init() -> Path:
    """The shipped variable-rate model (the default quality level's weights)."""
    from dqcodec.zoo import shipped_models

    rates = [level.weights for level in shipped_models().values() if level.rate_point is not None]
    if not rates:
        raise DQError("no variable-rate model is shipped: pass --init MODEL")
    return rates[0]


def burst(
    data: Path,
    run: Path,
    minutes: float,
    init: Path | None = None,
    device: str = "auto",
    recipe: BurstRecipe = BurstRecipe(),
    log=print,
) -> Path:
    """Train for `minutes` of wall time (start-up, compilation and validation included);
    returns the checkpoint to export: the best validated one, else the last."""
    from dqcodec.training.trainer import resolve_device

    on_gpu = resolve_device(device).type == "cuda"
    options = TrainOptions(
        data=data,
        out=run,
        init=init or default_init(),
        minutes=minutes,
        stop_after=minutes,
        stages=(Stage(recipe.crop, recipe.batch, 1.0),),
        lr=recipe.lr,
        warmup=recipe.warmup,
        val_every=recipe.val_every,
        checkpoint_every=recipe.val_every,
        device=device,
        balance_points=True,
        frozen_prior=True,
        compile=on_gpu,
    )
    return train(options, log=log)
