"""How many threads dqcodec runs its networks on: --threads / DQCODEC_THREADS when given, else
the cores this process may use that no other process is running on. Light on purpose: it loads
no torch.

Measured on a 2-core machine, decoding kodim23 in-process: 2 threads 0.34 s idle but 2.2 s
beside a process spinning on one core (OpenMP threads wait on each other while one is
descheduled, on every one of the prior's many small kernels); 1 thread 0.59 s idle and 0.58 s
beside it. A passive OpenMP wait policy (OMP_WAIT_POLICY=PASSIVE) gave 0.58 s busy but 0.50 s
idle, and GOMP_SPINCOUNT=20000 0.35 s idle but 1.3 s busy. So the wait policy stays the
default and the thread count follows the load: threads never spin on a core another process
needs, and an idle machine keeps its speed. The NumPy work (the integer prior, the decoder)
runs its blocks of rows on as many threads of dqcodec's own (`parallel_map`); in a program
that has loaded torch, the integer convolutions run on torch's int8 GEMM, on the calling
thread alone (`torch_threads(1)`). A command also has glibc keep freed memory for
its next allocations (`start_command`, `keep_freed_memory`)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
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


def asked_count(requested: int | None = None) -> int | None:
    """`requested`, else $DQCODEC_THREADS, else None (nobody asked for a count)."""
    if requested is not None:
        return requested
    value = os.environ.get(THREADS_ENV, "")
    if not value.strip():
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        from dqcodec.errors import DQError

        raise DQError(f"{THREADS_ENV} must be a positive integer, not {value!r}")
    return count


def thread_count(requested: int | None = None) -> int:
    """`requested`, else $DQCODEC_THREADS, else the idle cores."""
    asked = asked_count(requested)
    return idle_cores() if asked is None else asked


# NumPy's OpenBLAS sizes its thread pool when it loads. Where dqcodec loads NumPy itself (the
# command line calls use_threads first), OpenBLAS gets one thread and dqcodec's NumPy work runs
# its blocks on threads of its own (`parallel_map`): an idle OpenBLAS thread spins and would
# take a core from them. In a program that loaded NumPy before, OpenBLAS keeps its threads and
# the blocks run one after another. torch (OpenMP) gets the count. (Not MKL_NUM_THREADS:
# torch reads it too, as its own thread count.)
BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS",)
_blas_single = False  # OpenBLAS was given one thread before NumPy loaded
_workers = 1
_tile_workers = 1
_pools: dict[int, ThreadPoolExecutor] = {}  # by size
_in_pool = threading.local()


def use_threads(requested: int | None = None) -> int:
    """Run dqcodec's NumPy work (the integer prior, the decoder) and torch (the encoder's
    transforms) on thread_count(requested) threads, and both decoders' synthesis tiles
    two at a time where other processes leave this one a single core (`tile_workers`)."""
    global _blas_single, _workers, _tile_workers
    asked = asked_count(requested)
    count = thread_count(asked)
    if "numpy" not in sys.modules:
        for name in BLAS_VARIABLES:
            os.environ[name] = "1"
        _blas_single = True
    _workers = count if _blas_single else 1
    _tile_workers = 2 if asked is None and count == 1 < available_cores() else 1
    os.environ["OMP_NUM_THREADS"] = str(count)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(count)
    return count


# glibc's mallopt parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks for the next allocations of this process instead
    of handing them back to the system; whether it could (False off glibc). For a command's
    own process: a library leaves its host's allocator alone.

    By default glibc maps large blocks from the system and unmaps them when freed, and hands
    back a heap's free top, both past thresholds it adjusts as it goes; every fresh page then
    faults in again. The encoder's transforms allocate and free activations of tens of MB:
    a kodim23 encode took 34,000 page faults and 0.07 s of system time. With blocks of up to
    32 MB served from the heap and heaps trimmed only past 1 GB: 2,600, and 0.49 -> 0.44 s,
    for 13 MB more peak memory."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # another C library: its own policy
            return False
        set_option = libc.mallopt
    except (OSError, TypeError, AttributeError):  # no C library by that name (Windows)
        return False
    kept = set_option(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(kept and set_option(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def start_command(threads: int | None = None) -> int:
    """What a dqcodec command sets up first, before NumPy and torch load: its threads
    (`use_threads`, returned) and its allocator (`keep_freed_memory`)."""
    keep_freed_memory()
    return use_threads(threads)


def workers() -> int:
    """Threads of `parallel_map` (1 unless use_threads gave OpenBLAS one thread)."""
    return _workers


def tile_workers() -> int:
    """Threads on which independent tiles of a transform run side by side, each tile's torch
    kernels on its own thread: 2 where use_threads found a single idle core among several,
    with no count asked for; else 1 (the tiles in turn, each on torch's threads).

    With idle cores, torch's threads do better: split over two threads, each convolution of
    a tile ran 1.2x as fast as two tiles side by side (kodim23's synthesis, 0.113 s against
    0.136 s). Where one thread is all that is idle, a second one that splits convolutions
    waits whenever the scheduler sets it aside, while a second whole tile loses nothing: it
    takes the share of a busy core the scheduler gives it (kodim23 beside a process spinning
    on one of two cores: 0.19 s against 0.25 s on one thread)."""
    return _tile_workers


def parallel_map(function: Callable, items: Iterable, threads: int | None = None) -> list:
    """[function(item) for item in items] on `threads` threads (default workers()): NumPy
    releases the GIL in its kernels and BLAS calls, and torch in its operations, so
    independent blocks of an array computation run in parallel. Serial with one thread, and
    inside a worker (no nested waits on the pool). torch runs on one thread in each of them.

    The calling thread works too, taking items in turn with the pool's threads: it keeps its
    core, and a woken thread finds another one idle (waking threads for every share took
    about 5 % longer on kodim23, their work often landing on one core)."""
    items = list(items)
    count = min(workers() if threads is None else threads, len(items))
    if count == 1 or getattr(_in_pool, "active", False):
        return [function(item) for item in items]
    if count not in _pools:
        _pools[count] = ThreadPoolExecutor(count - 1, thread_name_prefix="dqcodec")
    results = [None] * len(items)
    pending = iter(range(len(items)))
    lock = threading.Lock()

    def work() -> None:
        _in_pool.active = True
        try:
            while True:
                with lock:
                    i = next(pending, None)
                if i is None:
                    return
                results[i] = function(items[i])
        finally:
            _in_pool.active = False

    def helper() -> None:
        _torch_on_one_thread()
        work()

    with torch_threads(1):
        helpers = [_pools[count].submit(helper) for _ in range(count - 1)]
        try:
            work()
        finally:
            for future in helpers:
                future.result()  # after every item is done; raises what a helper raised
    return results


# torch's thread count is a setting of each thread (OpenMP's): the pool's threads take 1 once
# and keep it, the calling thread takes 1 while it works with them and its own count back
# after (which is also the count that threads started later take).


def _torch_on_one_thread() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and not getattr(_in_pool, "torch_single", False):
        torch.set_num_threads(1)
        _in_pool.torch_single = True


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's kernels started from the calling thread run on `count` threads meanwhile,
    where torch is loaded (1: on the calling thread alone); other threads keep their own
    count."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
