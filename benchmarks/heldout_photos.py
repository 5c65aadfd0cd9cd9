"""Gather the photos that training holds out (the same split `dqcodec train` and
`dqcodec fit-prior` validate on) into a folder of symbolic links, for evaluating real files:

    python benchmarks/heldout_photos.py DIR [--data ../shared/data/train] [--count 16]
    dqcodec eval --data-dir DIR --compare jpeg,webp --json results/heldout_effort1.json
"""

from __future__ import annotations

from pathlib import Path

import click

from dqcodec.evaluation.datasets import list_images
from dqcodec.training.trainer import split_train_val


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path(__file__).resolve().parents[2] / "shared" / "data" / "train",
    show_default=True,
    help="The training folder.",
)
@click.option("--count", type=int, default=16, show_default=True, help="As train's --val-count.")
def main(out: Path, data: Path, count: int) -> None:
    _, held_out = split_train_val(list_images(data), count)
    out.mkdir(parents=True, exist_ok=True)
    for photo in held_out:
        link = out / photo.name
        if not link.is_symlink() and not link.exists():
            link.symlink_to(photo.resolve())
    click.echo(f"{len(held_out)} held-out photos in {out}")


if __name__ == "__main__":
    main()
