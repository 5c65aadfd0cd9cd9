"""What the integer prior costs: each quantization policy and calibration source against the
float prior, with real files on a folder of photos (levels of the shipped zoo).

    python benchmarks/integer_prior.py --data-dir DIR [--levels 1-9] [--effort 0]
        [--policies uniform8,decreasing,precise-ends] [--calibrations stored,synthesized,photos]
        [--photos ../shared/data/train] [--json results/integer_prior_kodak.json]

Prints, per configuration, the BD-rate against the float prior (format version 1, measured
in the same run) and the integer weights' size at the policy's bit widths, packed (decode
times: benchmarks/speed.py). Photo calibration uses centre crops of the training split
(never the evaluation photos).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from dqcodec.codec import Codec, load_codec
from dqcodec.entropy_models.calibration import (
    calibrate_photos,
    calibrate_synthesized,
    training_photos,
)
from dqcodec.entropy_models.integer_prior import POLICIES
from dqcodec.evaluation.datasets import list_images
from dqcodec.evaluation.evaluate import DQCoder, evaluate, summarize
from dqcodec.evaluation.rd import bd_rate
from dqcodec.zoo import read_calibration, shipped_models


def parse_levels(text: str) -> list[int]:
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(q) for q in text.split(",")]


class Calibrations:
    """One calibration per weights file and source, computed once."""

    def __init__(self, photos: list[Path]):
        self.photos, self.cache = photos, {}

    def get(self, codec: Codec, weights: Path, source: str) -> dict:
        key = (weights, source)
        if key not in self.cache:
            if source == "stored":
                self.cache[key] = read_calibration(weights)
            elif source == "synthesized":
                self.cache[key] = calibrate_synthesized(codec.model)
            else:
                self.cache[key] = calibrate_photos(codec.model, self.photos)
        return self.cache[key]


def codec_for(level: int, policy: str, source: str, calibrations: Calibrations) -> Codec:
    shipped = load_codec(level)
    weights = shipped_models()[level].weights
    calibration = None if policy == "float" else calibrations.get(shipped, weights, source)
    return Codec(
        shipped.model,
        level,
        shipped.rate_weight,
        shipped.rate_point,
        shipped.search_scale,
        calibration,
        None if policy == "float" else POLICIES[policy],
    )


@click.command()
@click.option(
    "--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True
)
@click.option("--levels", default="1-9", show_default=True)
@click.option("--effort", type=int, default=0, show_default=True)
@click.option("--policies", default="uniform8,decreasing,precise-ends", show_default=True)
@click.option(
    "--calibrations",
    default="stored",
    show_default=True,
    help="Comma-separated: stored, synthesized, photos.",
)
@click.option(
    "--photos",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path(__file__).resolve().parents[2] / "shared" / "data" / "train",
    show_default=True,
    help="Training photos for photo calibration (their training split).",
)
@click.option("--photo-count", type=int, default=12, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(data_dir, levels, effort, policies, calibrations, photos, photo_count, json_path) -> None:
    images = list_images(data_dir)
    cache = Calibrations(training_photos(photos, photo_count) if "photos" in calibrations else [])
    configs = [("float", "-")] + [
        (p, c) for p in policies.split(",") for c in calibrations.split(",")
    ]
    rows = {}
    for policy, source in configs:
        points, bits = [], {}
        for level in parse_levels(levels):
            codec = codec_for(level, policy, source, cache)
            results = evaluate(DQCoder(codec, effort), images, progress=False)
            points.append({"level": level, **summarize(results)})
            if policy != "float":  # per weights file: levels 4-9 share one
                bits[shipped_models()[level].weights] = codec.integer_model(
                    codec.rate_point
                ).weight_bits
        rows[f"{policy}/{source}"] = {"points": points, "weight_bytes": sum(bits.values()) // 8}
        click.echo(f"{policy}/{source}: done", err=True)
    reference = rows["float/-"]
    curve = lambda row: [(p["bpp"], p["psnr"]) for p in row["points"]]  # noqa: E731
    click.echo(f"{len(images)} images from {data_dir}, levels {levels}, effort {effort}")
    click.echo("| policy | calibration | BD-rate vs float prior | integer weights |")
    click.echo("|---|---|---|---|")
    for name, row in rows.items():
        policy, source = name.split("/")
        bd = bd_rate(curve(reference), curve(row))
        size = f"{row['weight_bytes'] / 1e6:.2f} MB" if row["weight_bytes"] else "-"
        click.echo(f"| {policy} | {source} | {bd:+.2f} % | {size} |")
        row["bd_rate_vs_float"] = bd
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(
            json.dumps(
                {
                    "data_dir": data_dir.name,
                    "levels": levels,
                    "effort": effort,
                    "configurations": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
