"""Assemble a second test set that nobody here trains on: six well-known colour photos that ship
inside the scikit-image wheel and matplotlib (NASA's astronaut and rocket, Chelsea the cat, coffee,
a Middlebury motorcycle, Grace Hopper), checked against fixed SHA-256 sums.

    python benchmarks/independent_photos.py DIR
    dqcodec eval --data-dir DIR --compare jpeg,webp --json results/independent_effort1.json

The scikit-image wheel is fetched with `pip download` (no install); matplotlib is a dependency.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import click
import matplotlib

from dqcodec.evaluation.datasets import file_matches

SKIMAGE_WHEEL = "scikit-image==0.26.0"
SHA256 = {
    "astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    "chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    "coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    "motorcycle_left.png": "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
    "rocket.jpg": "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
    "grace_hopper.jpg": "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
}
FROM_MATPLOTLIB = {"grace_hopper.jpg"}


def skimage_images(names: list[str]) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                SKIMAGE_WHEEL,
                "--no-deps",
                "--only-binary=:all:",
                "-q",
                "-d",
                tmp,
            ],
            check=True,
        )
        wheel = next(Path(tmp).glob("scikit_image-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            return {name: z.read(f"skimage/data/{name}") for name in names}


def matplotlib_image(name: str) -> bytes:
    return (Path(matplotlib.get_data_path()) / "sample_data" / name).read_bytes()


@click.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    missing = [n for n in SHA256 if not (folder / n).exists()]
    images = skimage_images([n for n in missing if n not in FROM_MATPLOTLIB])
    images.update({n: matplotlib_image(n) for n in missing if n in FROM_MATPLOTLIB})
    for name, data in images.items():
        (folder / name).write_bytes(data)
    for name, digest in SHA256.items():
        if not file_matches(folder / name, digest):
            raise click.ClickException(f"{folder / name}: SHA-256 mismatch")
    click.echo(f"{len(SHA256)} photos in {folder}")


if __name__ == "__main__":
    main()
