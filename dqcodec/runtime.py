"""How many threads dqcodec runs its networks on: --threads / DQCODEC_THREADS when given, else
the cores this process may use that no other process is running on. Light on purpose: it loads
no torch.

Measured on a 2-core machine, decoding kodim23 in-process: 2 threads 0.34 s idle but 2.2 s
beside a process spinning on one core (OpenMP threads wait on each other while one is
descheduled, on every one of the prior's many small kernels); 1 thread 0.59 s idle and 0.58 s
beside it. A passive OpenMP wait policy (OMP_WAIT_POLICY=PASSIVE) gave 0.58 s busy but 0.50 s
idle, and GOMP_SPINCOUNT=20000 0.35 s idle but 1.3 s busy. So the wait policy stays the
default and the thread count follows the load: threads never spin on a core another process
needs, and an idle machine keeps its speed. Decoding runs NumPy's BLAS (OpenBLAS: threads
that sleep when idle) on the same count."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

THREADS_ENV = "DQCODEC_THREADS"
LOAD_SAMPLES = 3  # a busy process is runnable in every sample, a passing one rarely
LOAD_SAMPLE_GAP_S = 0.002


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset set)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _own_runnable_threads() -> int:
    count = 0
    for task in Path("/proc/self/task").iterdir():
        stat = (task / "stat").read_text()
        count += stat[stat.rindex(")") + 2] == "R"  # the state field follows "(comm) "
    return count


def _other_runnable_threads_now() -> int:
    """Threads of other processes running or ready to run (Linux's /proc/loadavg counts
    runnable threads machine-wide, this process's included)."""
    runnable = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    return max(0, runnable - _own_runnable_threads())


def other_runnable_threads() -> int:
    """The fewest runnable threads of other processes over a few samples; 0 where the system
    does not say."""
    try:
        fewest = _other_runnable_threads_now()
        for _ in range(LOAD_SAMPLES - 1):
            time.sleep(LOAD_SAMPLE_GAP_S)
            fewest = min(fewest, _other_runnable_threads_now())
    except (OSError, ValueError, IndexError):
        return 0
    return fewest


def idle_cores() -> int:
    """The cores this process may use, less those other processes are running on (at least 1)."""
    free = (os.cpu_count() or 1) - other_runnable_threads()
    return max(1, min(available_cores(), free))


def thread_count(requested: int | None = None) -> int:
    """`requested`, else $DQCODEC_THREADS, else the idle cores."""
    if requested is not None:
        return requested
    value = os.environ.get(THREADS_ENV, "")
    if value.strip():
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            from dqcodec.errors import DQError

            raise DQError(f"{THREADS_ENV} must be a positive integer, not {value!r}")
        return count
    return idle_cores()


# NumPy's BLAS sizes its thread pool when it loads, torch (OpenMP) as well unless told later
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def use_threads(requested: int | None = None) -> int:
    """Run NumPy's BLAS (the decoder) and torch (the encoder) on thread_count(requested)
    threads: NumPy's count takes effect if it has not loaded yet (the command line sets it
    before), torch's at once if it has loaded, else when it loads."""
    count = thread_count(requested)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(count)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(count)
    return count
