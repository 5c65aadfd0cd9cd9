"""Encode and decode time of the default level on one image, for several checkouts of dqcodec
side by side: idle and with one core kept busy by another process.

    git worktree add ../dq-before 5aec69a
    python benchmarks/compare_checkouts.py before=../dq-before now=.

A shared machine's speed drifts by 10 % or more within an hour, so the checkouts take turns:
in each round, each one runs in a fresh process (the thread count chosen as a command would,
a warm-up, then `--runs` timed encodes and decodes of `Codec`), first on the idle machine,
then beside a spinning process. A figure is the median over the rounds of each process's
median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import statistics, sys, time
try:
    from dqcodec import runtime
except ImportError:  # a checkout from before dqcodec chose its threads
    pass
else:  # before NumPy and torch load, as that checkout's command does
    getattr(runtime, "start_command", runtime.use_threads)()
from PIL import Image
from dqcodec.codec import load_codec
codec = load_codec()
image = Image.open(sys.argv[1])
image.load()
codec.decode(codec.encode_image(image).data)
encode, decode = [], []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    data = codec.encode_image(image).data
    middle = time.perf_counter()
    codec.decode(data)
    encode.append(middle - start)
    decode.append(time.perf_counter() - middle)
print(statistics.median(encode), statistics.median(decode))
"""


def time_checkout(path: Path, image: Path, runs: int) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(path)}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(image), str(runs)],
        cwd=path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    encode, decode = map(float, result.stdout.split())
    return encode, decode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkouts", nargs="+", help="LABEL=PATH of a dqcodec checkout")
    ap.add_argument(
        "--image",
        type=Path,
        default=Path(os.path.relpath(REPO.parent / "shared" / "data" / "kodak" / "kodim23.png")),
    )
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per process")
    args = ap.parse_args()
    checkouts = {}
    for spec in args.checkouts:
        label, _, path = spec.partition("=")
        checkouts[label] = Path(path).resolve()
    image = args.image.resolve()
    times = {(label, load): [] for label in checkouts for load in ("idle", "busy")}
    for _ in range(args.rounds):
        for load in ("idle", "busy"):
            spinner = None
            if load == "busy":
                spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(0.5)  # until it spins
            try:
                for label, path in checkouts.items():
                    times[(label, load)].append(time_checkout(path, image, args.runs))
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
    print(f"{image.name}, {args.rounds} rounds of {args.runs} runs; seconds, busy/idle")
    print(f"{'checkout':12s} {'idle enc':>9s} {'idle dec':>9s} {'busy enc':>9s} {'busy dec':>9s}")
    for label in checkouts:
        idle = [statistics.median(t) for t in zip(*times[(label, "idle")])]
        busy = [statistics.median(t) for t in zip(*times[(label, "busy")])]
        print(
            f"{label:12s} {idle[0]:9.3f} {idle[1]:9.3f} {busy[0]:9.3f} {busy[1]:9.3f}"
            f"   {busy[0] / idle[0]:.2f}x / {busy[1] / idle[1]:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
