"""How dqcodec shares the machine: OpenMP threads that sleep while they wait instead of
spinning (so a busy neighbour does not slow every pass), and as many threads as the cores
this process may run on. Light on purpose: it must run before torch is imported."""

from __future__ import annotations

import os

THREADS_ENV = "DQCODEC_THREADS"


def prepare_environment() -> None:
    """Passive OpenMP waiting unless the user chose otherwise; effective only before torch
    (and its OpenMP runtime) is loaded, so `import dqcodec` does it first."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset set)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def thread_count(requested: int | None = None) -> int:
    """`requested`, else $DQCODEC_THREADS, else the available cores."""
    if requested is not None:
        return requested
    value = os.environ.get(THREADS_ENV, "")
    if value.strip():
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            from .errors import DQError

            raise DQError(f"{THREADS_ENV} must be a positive integer, not {value!r}")
        return count
    return available_cores()


def use_threads(requested: int | None = None) -> int:
    import torch

    count = thread_count(requested)
    torch.set_num_threads(count)
    return count
