"""Put what `scripts/gpu_burst.sh` needs on a GPU machine into `.burst/` (ignored by git,
carried with the working tree): training photos up to a size budget and the wheels of the
packages the GPU machine's Python lacks.

    python scripts/prepare_gpu_burst.py [--photos ../shared/data/train] [--megabytes 26]

The photos are the training split's (never its held-out photos, which validate), in a fixed
order, until the budget is full; the working tree that travels must stay under 64 MiB.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from dqcodec.entropy_models.calibration import training_photos

REPO = Path(__file__).resolve().parents[1]
BURST = REPO / ".burst"
# what the GPU machine's Python 3.12 lacks among dqcodec's dependencies
WHEELS = ("constriction==0.5.0", "pytorch-msssim==1.0.0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def ignore_burst_folder() -> None:
    exclude = REPO / ".git" / "info" / "exclude"
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if "/.burst/" not in lines:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text("\n".join([*lines, "/.burst/"]) + "\n")


def copy_photos(source: Path, budget: int) -> tuple[int, int]:
    target = BURST / "photos"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    count = size = 0
    for path in training_photos(source, 10**6):
        if size + path.stat().st_size > budget:
            break
        shutil.copy2(path, target / path.name)
        count, size = count + 1, size + path.stat().st_size
    return count, size


def download_wheels() -> None:
    target = BURST / "wheels"
    shutil.rmtree(target, ignore_errors=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    for wheel in WHEELS:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.12", "--implementation", "cp", *platforms,
             "-d", str(target), wheel],
            check=True,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "train")
    parser.add_argument("--megabytes", type=float, default=26.0)
    args = parser.parse_args()
    ignore_burst_folder()
    count, size = copy_photos(args.photos, int(args.megabytes * 2**20))
    download_wheels()
    print(f".burst/photos: {count} photos, {size / 2**20:.1f} MiB; .burst/wheels: {WHEELS}")


if __name__ == "__main__":
    main()
