"""What the benchmarks share: running a measurement in a fresh process, and reading that
process's memory figures.

A spawned child starts with nothing of its parent's memory; on Linux its `ru_maxrss` still
starts at the parent's peak (the kernel carries the high-water mark across fork and exec), so
the figures come from the child's own /proc/self/status instead."""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys


def status_mb(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM, ...) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def maxrss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB else


def peak_mb() -> float:
    """This process's peak RSS: VmHWM where there is /proc, else ru_maxrss."""
    try:
        return status_mb("VmHWM")
    except (OSError, RuntimeError):
        return maxrss_mb()


def in_child(target, *args) -> dict:
    """target(queue, *args) run in a fresh 'spawn' process; what it put on the queue, with
    "ok": False and the reason when it failed or exited with an error."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(queue, *args))
    proc.start()
    try:
        result = queue.get()
    finally:
        proc.join()
    if result["ok"] and proc.exitcode:
        result = {"ok": False, "error": f"child exit code {proc.exitcode}"}
    return result
