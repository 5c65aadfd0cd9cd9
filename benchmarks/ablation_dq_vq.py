"""DQ versus VQ at equal budget: same transforms, codebook memory, training steps and data.

Trains one small model per quantizer setting (only G changes; K and C stay, so every arm
has K x C codebook floats per level), then codes Kodak at several encode-time assignment
strengths to trace each arm's rate-distortion curve from the real bitstreams, and prints
the Bjøntegaard delta rate between the arms.

    python benchmarks/ablation_dq_vq.py --steps 800 --json docs/ablation.json

Run by hand (minutes of CPU per arm); not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dqcodec.codec import Codec
from dqcodec.config import LevelConfig, ModelConfig
from dqcodec.datasets import list_images
from dqcodec.evaluation import evaluate
from dqcodec.rd import bd_rate
from dqcodec.training import Stage, TrainOptions, model_from_checkpoint, train

REPO = Path(__file__).resolve().parents[1]
CHANNELS_BOTTOM, CHANNELS_TOP, CODES = 96, 32, 16


def arm_config(groups_bottom: int, groups_top: int) -> ModelConfig:
    def level(channels: int, groups: int, slices: int) -> LevelConfig:
        return LevelConfig(channels, groups, CODES, slices if groups % slices == 0 else 1)

    return ModelConfig(width=64, prior_width=64, bottom=level(CHANNELS_BOTTOM, groups_bottom, 4),
                       top=level(CHANNELS_TOP, groups_top, 2))


ARMS = {
    "DQ (G=48/16, d=2)": arm_config(48, 16),
    "VQ (G=1)": arm_config(1, 1),
}


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
    curves, rows = {}, []
    for name, config in ARMS.items():
        out = Path(args.out) / name.split(" ")[0].lower()
        opts = TrainOptions(data=Path(args.train_dir), out=out, steps=args.steps, lr=1e-3, warmup=100,
                            stages=(Stage(64, 16, 1.0),), val_every=10**9,
                            checkpoint_every=max(100, args.steps // 4), config=config)
        start = time.time()
        train(opts, resume=True, log=lambda *a: None)
        minutes = (time.time() - start) / 60
        model = model_from_checkpoint(out / "checkpoint.pt")
        memory = sum(level.quantizer.codebooks.numel() for level in (model.top, model.bottom))
        curve = []
        for w in weights:
            results = evaluate(Codec(model, rate_weight=w), kodak, progress=False)
            point = (float(np.mean([r.bpp for r in results])), float(np.mean([r.psnr for r in results])))
            curve.append(point)
            rows.append((name, w, *point))
            print(f"{name:20s} rate weight {w:<5g} {point[0]:.4f} bpp {point[1]:.2f} dB", flush=True)
        curves[name] = {"curve": curve, "codebook_floats": memory, "train_minutes": minutes}
    names = list(ARMS)
    delta = bd_rate(curves[names[0]]["curve"], curves[names[1]]["curve"])
    print(f"BD-rate of {names[1]} against {names[0]}: "
          + ("no PSNR overlap" if delta is None else f"{delta:+.1f}%"))
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "arms": curves,
                                               "bd_rate_vq_vs_dq": delta}, indent=2))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
