"""BD-rate between the dqcodec curves of two `dqcodec eval --json` files: how many more
(or, negative, fewer) bits B needs than A for the same PSNR, with the points side by side.

    dqcodec eval --data-dir DIR --json a.json                      # the shipped levels
    dqcodec eval --data-dir DIR --model candidate.safetensors --json b.json   # every rate point
    python benchmarks/compare_evals.py a.json b.json --a-settings q4-q9 --b-settings p1-p6

Settings are the names the eval wrote (`q5` for a shipped level, `p2` for a model's rate
point); `q4-q9` is a range, `q1,q3` a list. By default every point of both curves is used.
"""

from __future__ import annotations

import json
import re
from itertools import zip_longest
from pathlib import Path

import click

from dqcodec.evaluation.evaluate import rd_pairs
from dqcodec.evaluation.rd import bd_rate


def parse_settings(text: str | None) -> list[str] | None:
    """`q4-q9` -> [q4, ..., q9]; `q1,p2` -> [q1, p2]; None -> None (all)."""
    if not text:
        return None
    names = []
    for part in text.split(","):
        match = re.fullmatch(r"([a-z]+)(\d+)-(?:[a-z]+)?(\d+)", part.strip())
        if match:
            prefix, lo, hi = match.group(1), int(match.group(2)), int(match.group(3))
            names += [f"{prefix}{i}" for i in range(lo, hi + 1)]
        else:
            names.append(part.strip())
    return names


def dqcodec_curve(path: Path, settings: list[str] | None) -> list[dict]:
    curves = json.loads(path.read_text())["curves"]
    name = next(n for n in curves if n.startswith("dqcodec"))
    points = curves[name]
    if settings is None:
        return points
    by_setting = {p["setting"]: p for p in points}
    missing = [s for s in settings if s not in by_setting]
    if missing:
        raise click.ClickException(
            f"{path}: no setting {', '.join(missing)} (it has {', '.join(by_setting)})"
        )
    return [by_setting[s] for s in settings]


def point_cells(point: dict | None) -> str:
    if point is None:
        return " " * 23
    return f"{point['setting']:>6}{point['bpp']:>9.4f}{point['psnr']:>8.2f}"


@click.command()
@click.argument("a", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("b", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--a-settings", help="Points of A to use, e.g. q4-q9 (default: all).")
@click.option("--b-settings", help="Points of B to use, e.g. p1-p6 (default: all).")
def main(a: Path, b: Path, a_settings: str | None, b_settings: str | None) -> None:
    curve_a = dqcodec_curve(a, parse_settings(a_settings))
    curve_b = dqcodec_curve(b, parse_settings(b_settings))
    click.echo(f"{'A':>6}{'bpp':>9}{'PSNR':>8}   {'B':>6}{'bpp':>9}{'PSNR':>8}")
    for pa, pb in zip_longest(curve_a, curve_b):
        click.echo(f"{point_cells(pa)}   {point_cells(pb)}")
    pairs = rd_pairs({"a": curve_a, "b": curve_b})
    value = bd_rate(pairs["a"], pairs["b"])
    click.echo(
        "BD-rate of B against A: "
        + ("curves do not overlap" if value is None else f"{value:+.2f}%")
    )


if __name__ == "__main__":
    main()
