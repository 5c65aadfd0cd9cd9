"""How many threads dqcodec runs its networks on: the cores this process may use, unless
--threads / DQCODEC_THREADS say otherwise. Light on purpose: it loads no torch.

Measured on a 2-core machine, decoding kodim23 (integer prior): 2 threads 0.36 s idle but
1.04 s beside a process spinning on one core (the two threads wait on each other while one
is descheduled); 1 thread 0.60 s idle and 0.59-0.64 s beside it. A passive OpenMP wait policy
(OMP_WAIT_POLICY=PASSIVE) gave 0.67 s busy but 0.53 s idle: the integer prior runs many small
parallel kernels, and each one then wakes its threads. So the default wait policy stays."""

from __future__ import annotations

import os

THREADS_ENV = "DQCODEC_THREADS"


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
            from dqcodec.errors import DQError

            raise DQError(f"{THREADS_ENV} must be a positive integer, not {value!r}")
        return count
    return available_cores()


def use_threads(requested: int | None = None) -> int:
    import torch

    count = thread_count(requested)
    torch.set_num_threads(count)
    return count
