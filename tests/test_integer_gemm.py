"""torch's int8 GEMM (layers/int8_gemm.py) gives the integer convolutions the same sums as
NumPy's float GEMM, on every oneDNN kernel, so the torch paths and the NumPy decoder agree."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dqcodec.layers import int8_gemm
from dqcodec.layers.fixed_point import Format, int_conv
from dqcodec.layers.int8_gemm import PLANES_LIMIT as INT8_PLANES_LIMIT


def _extreme_cases(rng) -> list[tuple[np.ndarray, np.ndarray]]:
    """(cols, weight) at the widths the integer prior uses, with their largest values."""
    cases = []
    for input_bits, weight_bits, (m, k, n) in [
        (8, 7, (40, 1152, 128)),
        (8, 8, (3, 9, 128)),
        (15, 14, (33, 1200, 96)),
        (15, 8, (1, 432, 16)),
        (15, 14, (3, 2100, 8)),  # too long for a digit's plane sums in int32
        (8, 7, (3, 2100, 8)),  # and for a single digit's
    ]:
        top = (1 << (input_bits - 1)) - 1
        cols = rng.integers(-top - 1, top + 1, (m, k))
        cols[0] = top  # the largest products, all of one sign
        cols[-1] = -top - 1
        weight = rng.integers(-(1 << (weight_bits - 1)) + 1, 1 << (weight_bits - 1), (k, n))
        weight[:, 0] = (1 << (weight_bits - 1)) - 1
        cases.append((cols.astype(np.int8 if input_bits == 8 else np.int16), weight))
    return cases


def test_int8_gemm_gives_the_exact_sums():
    for cols, weight in _extreme_cases(np.random.default_rng(0)):
        exact = cols.astype(np.float64) @ weight.astype(np.float64)  # every sum < 2^53
        digits = int8_gemm.weight_digits(weight)
        got = int8_gemm.matmul(int8_gemm.planes(cols), digits)
        narrow = len(digits) == 1 and cols.shape[1] < 2048
        assert got.dtype == (np.int32 if narrow else np.int64)
        assert np.array_equal(got, exact.astype(np.int64))


def test_weight_digits_and_planes_stay_within_int8():
    weight = np.array([[-8191, -65, -64, 0, 64, 65, 8191]])
    digits = int8_gemm.weight_digits(weight)
    assert all(np.abs(d.astype(int)).max() <= 64 for d, _ in digits)
    assert np.array_equal(sum(d.astype(np.int64) << o for d, o in digits), weight)
    x = np.array([-INT8_PLANES_LIMIT, -129, -1, 0, 127, 128, INT8_PLANES_LIMIT - 1], np.int16)
    assert np.array_equal(sum(p.astype(np.int64) << o for p, o in int8_gemm.planes(x)), x)


@pytest.mark.parametrize("kernel,bits", [(3, 8), (5, 14), (1, 15)])
def test_convolutions_agree_on_both_gemms(monkeypatch, kernel, bits):
    weight = np.random.default_rng(0).normal(size=(7, 6, kernel, kernel))
    top = (1 << (bits - 1)) - 1
    source = Format(0.1, 3, -100, 100) if bits == 8 else Format(0.1, 0, -top, top)
    out = Format(1.0, 0, -(1 << 40), 1 << 40)
    conv = int_conv(weight, None, source, None, np.full(7, 1.0), out, min(bits, 14))
    x = np.random.default_rng(1).integers(source.low, source.high + 1, (1, 9, 11, 6))
    x = x.astype(np.int8 if bits == 8 else np.int16)
    at = np.random.default_rng(2).random((9, 11)) < 0.5
    assert conv.int8_gemm()
    on_int8 = conv.accumulate(x, source.zero), conv(x, source.zero, at)
    monkeypatch.setattr(int8_gemm, "loaded_torch", lambda: None)
    assert not conv.int8_gemm()
    on_float = conv.accumulate(x, source.zero), conv(x, source.zero, at)
    for a, b in zip(on_int8, on_float):
        assert np.array_equal(a, b)


def test_the_int8_gemms_run_on_the_calling_thread_alone(monkeypatch):
    """torch's thread count is 1 during a convolution's int8 GEMMs and the caller's again
    after, also when a GEMM fails."""
    conv = int_conv(
        np.ones((4, 3, 3, 3)), None, Format(1.0), None, np.ones(4), Format(1.0, 0, -999, 999), 8
    )
    x = np.ones((1, 5, 5, 3), dtype=np.int8)
    counts = []
    real = int8_gemm.matmul

    def counting(planes, digits):
        counts.append(torch.get_num_threads())
        return real(planes, digits)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(int8_gemm, "matmul", counting)
        conv(x, 0)
        assert counts and set(counts) == {1}
        assert torch.get_num_threads() == 2

        def failing(planes, digits):
            raise RuntimeError("out of memory")

        monkeypatch.setattr(int8_gemm, "matmul", failing)
        with pytest.raises(RuntimeError):
            conv(x, 0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_torch_without_a_cpu_int8_gemm_falls_back_to_float(monkeypatch):
    def cuda_only(a, b):
        raise RuntimeError("_int_mm is not implemented for CPU tensors")

    monkeypatch.setattr(torch, "_int_mm", cuda_only)
    monkeypatch.setattr(int8_gemm, "_works", None)
    conv = int_conv(
        np.ones((2, 3, 1, 1)), None, Format(1.0), None, np.ones(2), Format(1.0, 0, -999, 999), 8
    )
    assert not conv.int8_gemm()
    x = np.full((1, 2, 2, 3), 5, dtype=np.int8)
    assert np.array_equal(conv(x, 0), np.full((1, 2, 2, 2), 15))


CHILD = """
import numpy as np, torch
from dqcodec.layers import int8_gemm
from test_integer_gemm import _extreme_cases
for threads in (1, 2):
    torch.set_num_threads(threads)
    for cols, weight in _extreme_cases(np.random.default_rng(0)):
        exact = (cols.astype(np.float64) @ weight.astype(np.float64)).astype(np.int64)
        got = int8_gemm.matmul(int8_gemm.planes(cols), int8_gemm.weight_digits(weight))
        assert np.array_equal(got, exact)
# whether this kernel adds u8 x s8 pairs in saturating int16 (then 127 x 127 pairs overflow)
a = torch.full((32, 64), 127, dtype=torch.int8)
print("saturates" if int(torch._int_mm(a, a.T.contiguous())[0, 0]) != 64 * 127 * 127 else "exact")
"""

# oneDNN's int8 kernels without VNNI, and torch's own kernels to match
OLDER_KERNELS = {
    "SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"},
    "AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}


@pytest.mark.parametrize("isa", sorted(OLDER_KERNELS))
def test_int8_gemm_is_exact_on_kernels_without_vnni(isa):
    """The digits within +-64 keep the saturating kernels exact; the child says the kernel it
    ran saturates raw int8 products, so this really ran one of them."""
    if isa == "AVX2" and "avx" not in torch.backends.cpu.get_cpu_capability().lower():
        pytest.skip("this CPU has no AVX2")
    env = {**os.environ, **OLDER_KERNELS[isa]}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["saturates"]
