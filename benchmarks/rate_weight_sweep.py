"""How far the encoder's rate-aware assignment strength moves one model along the RD curve.

The decoder does not depend on the assignment strength, so quality levels can share
weights. Run on held-out photos (not Kodak) to choose the levels in models/zoo.json:

    python benchmarks/rate_weight_sweep.py --model models/X.safetensors --data-dir DIR

With --level N it also measures the shipped levels N-1, N and N+1 on the same photos and
says where each strength of the candidate lies against their curve, and what the candidate
gives at level N's rate: how a retrained model for level N is judged before it ships.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from dqcodec.codec import Codec, load_codec
from dqcodec.evaluation.datasets import list_images
from dqcodec.evaluation.evaluate import DQCoder, evaluate, summarize
from dqcodec.evaluation.rd import psnr_at
from dqcodec.models.encoder_search import DEFAULT_EFFORT
from dqcodec.training.trainer import split_train_val
from dqcodec.zoo import read_model_file, shipped_models

Point = tuple[float, float]


def measure(codec: Codec, photos: list[Path], effort: int) -> Point:
    mean = summarize(evaluate(DQCoder(codec, effort), photos, progress=False))
    return mean["bpp"], mean["psnr"]


def row(label: str, point: Point) -> str:
    return f"{label:>12}{point[0]:>9.4f}{point[1]:>8.2f}"


def offset(curve: Iterable[Point], point: Point) -> str:
    """dB of `point` above the curve at its rate (piecewise linear in log bpp)."""
    at = psnr_at(curve, point[0])
    return "outside" if at is None else f"{point[1] - at:+.3f} dB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="a training folder: its held-out validation split is used",
    )
    parser.add_argument("--weights", default="0,0.02,0.05,0.1,0.2,0.4,0.8")
    parser.add_argument("--count", type=int, default=16, help="how many of the 16 held-out photos")
    parser.add_argument("--effort", type=int, default=DEFAULT_EFFORT)
    parser.add_argument("--search-scale", type=float, default=1.0)
    parser.add_argument(
        "--rate-point", type=int, help="of a variable-rate model (default: its highest)"
    )
    parser.add_argument(
        "--level", type=int, help="compare with this shipped level and its neighbours"
    )
    args = parser.parse_args()

    _, val = split_train_val(list_images(args.data_dir), 16)
    photos = val[: args.count]
    print(f"{len(photos)} held-out photos, effort {args.effort}")

    zoo_curve: dict[int, Point] = {}
    if args.level is not None:
        for quality in (q for q in shipped_models() if abs(q - args.level) <= 1):
            zoo_curve[quality] = measure(load_codec(quality), photos, args.effort)
            print(row(f"level {quality}", zoo_curve[quality]))

    model = read_model_file(args.model)
    print(
        f"{'rate weight':>12}{'bpp':>9}{'PSNR':>8}"
        + ("   against the levels' curve" if zoo_curve else "")
    )
    candidate = []
    for weight in (float(w) for w in args.weights.split(",")):
        codec = Codec(
            model,
            quality=args.level or 0,
            rate_weight=weight,
            rate_point=args.rate_point,
            search_scale=args.search_scale,
        )
        candidate.append(measure(codec, photos, args.effort))
        note = f"   {offset(zoo_curve.values(), candidate[-1])}" if zoo_curve else ""
        print(row(f"{weight:.3f}", candidate[-1]) + note)

    if args.level in zoo_curve:
        rate, quality = zoo_curve[args.level]
        at = psnr_at(candidate, rate)
        print(
            f"at level {args.level}'s {rate:.4f} bpp the candidate gives "
            + (
                "(outside its strengths' range)"
                if at is None
                else f"{at:.2f} dB ({at - quality:+.3f} dB)"
            )
        )


if __name__ == "__main__":
    main()
