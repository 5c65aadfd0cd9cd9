import os
import subprocess
import sys
import threading
import time

import pytest

from dqcodec import runtime
from dqcodec.errors import DQError


def test_threads_follow_the_idle_cores(monkeypatch):
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(runtime, "available_cores", lambda: 4)
    for others, expected in ((0, 4), (4, 4), (5, 3), (7, 1), (30, 1)):
        monkeypatch.setattr(runtime, "_other_runnable_threads_now", lambda n=others: n)
        assert runtime.idle_cores() == expected


def test_a_passing_thread_is_not_counted_as_load(monkeypatch):
    samples = iter([3, 0, 2])
    monkeypatch.setattr(runtime, "_other_runnable_threads_now", lambda: next(samples))
    assert runtime.other_runnable_threads() == 0


def test_explicit_counts_win(monkeypatch):
    monkeypatch.setattr(runtime, "idle_cores", lambda: 1)
    monkeypatch.setenv(runtime.THREADS_ENV, "3")
    assert runtime.thread_count() == 3
    assert runtime.thread_count(2) == 2
    monkeypatch.setenv(runtime.THREADS_ENV, "zero")
    with pytest.raises(DQError, match="positive integer"):
        runtime.thread_count()
    monkeypatch.delenv(runtime.THREADS_ENV)
    assert runtime.thread_count() == 1


def test_tiles_go_two_at_a_time_only_where_one_core_of_several_is_idle(monkeypatch):
    monkeypatch.setattr(runtime, "_workers", runtime._workers)
    monkeypatch.setattr(runtime, "_tile_workers", runtime._tile_workers)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setitem(sys.modules, "torch", None)  # leaves this process's torch alone
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    cases = [  # cores, idle cores, --threads, tile workers
        (2, 2, None, 1),
        (2, 1, None, 2),
        (8, 1, None, 2),
        (8, 3, None, 1),
        (1, 1, None, 1),
        (2, 1, 1, 1),
        (2, 1, 2, 1),
    ]
    for cores, idle, requested, expected in cases:
        monkeypatch.setattr(runtime, "available_cores", lambda n=cores: n)
        monkeypatch.setattr(runtime, "idle_cores", lambda n=idle: n)
        runtime.use_threads(requested)
        assert runtime.tile_workers() == expected, (cores, idle, requested)
    monkeypatch.setenv(runtime.THREADS_ENV, "1")
    runtime.use_threads()
    assert runtime.tile_workers() == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_process_is_seen():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert runtime.other_runnable_threads() >= 1
    finally:
        spinner.kill()
        spinner.wait()


def test_use_threads_sizes_numpy_and_torch_before_they_load():
    code = (
        "import os, sys; from dqcodec import runtime; runtime.use_threads(1); "
        "assert 'numpy' not in sys.modules and 'torch' not in sys.modules; "
        "import torch; print(os.environ['OPENBLAS_NUM_THREADS'], torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]


def test_parallel_map_keeps_order_and_runs_nested_calls_serially(monkeypatch):
    monkeypatch.setattr(runtime, "_workers", 2)
    names = set()

    def inner(i):
        names.add(threading.current_thread().name)
        time.sleep(0.005)  # long enough for the pool's thread to take items too
        return i * i

    def outer(i):  # a map inside a worker must not wait on the busy pool
        return sum(runtime.parallel_map(inner, range(i)))

    assert runtime.parallel_map(outer, range(6)) == [sum(j * j for j in range(i)) for i in range(6)]
    assert any(name.startswith("dqcodec") for name in names)  # the caller works too


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc, reads /proc")
@pytest.mark.parametrize("kept", [False, True])
def test_a_command_keeps_freed_memory_for_its_next_allocations(kept):
    """glibc hands a freed 24 MB block straight back to the system; after keep_freed_memory
    the process keeps it, resident, for its next allocations."""
    code = (
        "from dqcodec import runtime\n"
        f"assert runtime.keep_freed_memory() if {kept} else True\n"
        "def resident():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmRSS:'):\n"
        "            return int(line.split()[1]) >> 10\n"
        "before = resident()\n"
        "block = bytearray(24 << 20)\n"  # zeroed: every page touched
        "del block\n"
        "print(resident() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    grown_mb = int(out.stdout)
    assert grown_mb >= 20 if kept else grown_mb <= 4


def test_commands_set_up_threads_and_memory(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from dqcodec.cli.main import main

    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append("memory"))
    monkeypatch.setattr(runtime, "use_threads", lambda threads=None: calls.append(threads) or 1)
    result = CliRunner().invoke(main, ["--threads", "1", "info", str(tmp_path / "none.dq")])
    assert calls[:2] == ["memory", 1], result.output
