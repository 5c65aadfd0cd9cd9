"""DQ versus VQ at equal budget: same transforms, codebook memory, training steps and data.

Trains small models that differ only in G (K and C stay, so every model has K x C codebook
floats per level) at several trade-offs λ, codes Kodak with each at several encode-time
assignment strengths (real bitstreams), and compares the best curve each quantizer reaches
(the Pareto front of all its points): PSNR at equal rate and the Bjøntegaard delta rate.

    python benchmarks/ablation_dq_vq.py --steps 800 --json results/ablation_dq_vs_vq.json

Run by hand (minutes of CPU per arm); not part of the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from dqcodec.codec import Codec
from dqcodec.evaluation.datasets import list_images
from dqcodec.evaluation.evaluate import DQCoder, evaluate, summarize
from dqcodec.evaluation.rd import bd_rate, psnr_at
from dqcodec.models.config import LevelConfig, ModelConfig
from dqcodec.training.trainer import Stage, TrainOptions, model_from_checkpoint, train

REPO = Path(__file__).resolve().parents[1]
CHANNELS_BOTTOM, CHANNELS_TOP, CODES = 96, 32, 16


def arm_config(groups_bottom: int, groups_top: int) -> ModelConfig:
    def level(channels: int, groups: int, slices: int) -> LevelConfig:
        return LevelConfig(channels, groups, CODES, slices if groups % slices == 0 else 1)

    return ModelConfig(
        width=64,
        prior_width=64,
        bottom=level(CHANNELS_BOTTOM, groups_bottom, 4),
        top=level(CHANNELS_TOP, groups_top, 2),
    )


FAMILIES = {"DQ": arm_config(48, 16), "VQ": arm_config(1, 1)}
LAMBDAS = {"DQ": (0.0067, 0.0005, 0.00005), "VQ": (0.0067, 0.0005)}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both rate and PSNR, by increasing rate."""
    front = []
    for bpp, psnr in sorted(points):
        if not front or psnr > front[-1][1]:
            front.append((bpp, psnr))
    return front


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-dir", default=str(REPO.parent / "shared" / "data" / "train"))
    parser.add_argument("--kodak-dir", default=str(REPO.parent / "shared" / "data" / "kodak"))
    parser.add_argument("--out", default="runs/ablation", help="training folders go here")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--rate-weights", default="0,0.05,0.2,0.8,3")
    parser.add_argument("--json", help="save curves and BD-rates here")
    args = parser.parse_args()
    weights = [float(w) for w in args.rate_weights.split(",")]
    kodak = list_images(Path(args.kodak_dir))
    arms, fronts = [], {}
    for family, config in FAMILIES.items():
        points = []
        for lmbda in LAMBDAS[family]:
            arm = train_and_code(
                family, dataclasses.replace(config, lmbda=lmbda), args, weights, kodak
            )
            arms.append(arm)
            points += arm["curve"]
        fronts[family] = pareto_front(points)
    dq, vq = fronts["DQ"], fronts["VQ"]
    delta = bd_rate(dq, vq)
    print(
        "BD-rate of VQ against DQ (Pareto fronts): "
        + ("no PSNR overlap" if delta is None else f"{delta:+.1f}%")
    )
    for bpp, psnr in vq:
        at = psnr_at(dq, bpp)
        print(
            f"at {bpp:.4f} bpp: VQ {psnr:.2f} dB, DQ "
            + ("outside its measured range" if at is None else f"{at:.2f} dB ({at - psnr:+.2f})")
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"steps": args.steps, "arms": arms, "fronts": fronts, "bd_rate_vq_vs_dq": delta},
                indent=2,
            )
        )


def train_and_code(
    family: str, config: ModelConfig, args, weights: list[float], kodak: list[Path]
) -> dict:
    out = Path(args.out) / f"{family.lower()}-{config.lmbda:g}"
    opts = TrainOptions(
        data=Path(args.train_dir),
        out=out,
        steps=args.steps,
        lr=1e-3,
        warmup=100,
        stages=(Stage(64, 16, 1.0),),
        val_every=10**9,
        checkpoint_every=max(100, args.steps // 4),
        config=config,
    )
    start = time.time()
    train(opts, resume=True, log=lambda *a: None)
    minutes = (time.time() - start) / 60
    model = model_from_checkpoint(out / "checkpoint.pt")
    memory = sum(level.quantizer.codebooks.numel() for level in (model.top, model.bottom))
    curve = []
    for w in weights:
        mean = summarize(evaluate(DQCoder(Codec(model, rate_weight=w)), kodak, progress=False))
        curve.append((mean["bpp"], mean["psnr"]))
        print(
            f"{family} λ={config.lmbda:<8g} rate weight {w:<5g} {curve[-1][0]:.4f} bpp "
            f"{curve[-1][1]:.2f} dB",
            flush=True,
        )
    return {
        "family": family,
        "lmbda": config.lmbda,
        "groups": [config.bottom.groups, config.top.groups],
        "codebook_floats": memory,
        "train_minutes": minutes,
        "rate_weights": weights,
        "curve": curve,
    }


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
