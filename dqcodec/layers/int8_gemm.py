"""The integer convolutions' GEMM as int8 x int8 -> int32 products (torch._int_mm), for
programs that have loaded torch: on CPUs with VNNI it has several times the throughput of
the float32 GEMM that NumPy alone offers, and its sums are the same integers.

Activations of up to 15 bits are split into int8 planes and weights into int8 digits within
+-64. oneDNN's int8 kernels for CPUs without VNNI (SSE4.1, AVX2) add pairs of u8 x s8
products in saturating int16: with |digit| <= 64 no pair can exceed 2 * 255 * 64 < 2^15, so
every kernel sums exactly (tests/test_integer_gemm.py runs those kernels)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import numpy as np

DIGIT_BITS = 7
DIGIT_MAX = 64
PLANES_LIMIT = 1 << 14  # the largest |input| that `planes` splits into two int8 planes


_works: bool | None = None  # whether the loaded torch has an int8 GEMM on the CPU


def loaded_torch():
    """torch, where this program has imported it (dqcodec never imports it for this)."""
    return sys.modules.get("torch")


def available() -> bool:
    """Whether `matmul` can run: torch is loaded and has torch._int_mm for CPU tensors (torch
    2.1 has it for CUDA only), checked once on a small product."""
    global _works
    torch = loaded_torch()
    if torch is None:
        return False
    if _works is None:
        a = np.arange(-64, 64, dtype=np.int8).reshape(32, 4).repeat(4, 1)
        try:
            product = torch._int_mm(torch.from_numpy(a), torch.from_numpy(a[:16].T.copy()))
            _works = np.array_equal(product.numpy(), a.astype(np.int32) @ a[:16].T.astype(np.int32))
        except (AttributeError, RuntimeError, NotImplementedError):
            _works = False
    return _works


def weight_digits(weight: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Integer weights as int8 digits within +-64 with their bit offsets:
    weight = sum digit << offset."""
    digits, rest, offset = [], weight.astype(np.int64), 0
    while int(np.abs(rest).max(initial=0)) > DIGIT_MAX:
        high = (rest + DIGIT_MAX) >> DIGIT_BITS
        digits.append(((rest - (high << DIGIT_BITS)).astype(np.int8), offset))
        rest, offset = high, offset + DIGIT_BITS
    digits.append((rest.astype(np.int8), offset))
    return digits


def planes(x: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """int8 activations as they are; up to 15-bit int16 ones as two int8 planes with their
    bit offsets: x = high * 256 + low, low in [-128, 127]."""
    if x.dtype == np.int8:
        return [(x, 0)]
    high = (x + np.int16(128)) >> 8  # 15-bit values leave room for the +128
    low = x - (high << 8)
    return [(high.astype(np.int8), 8), (low.astype(np.int8), 0)]


def matmul(
    planes: list[tuple[np.ndarray, int]], digits: list[tuple[np.ndarray, int]]
) -> np.ndarray:
    """(m, n) sums: the integer columns whose int8 planes (m, k) with their bit offsets
    `planes` holds, @ the weights whose digits `digits` holds. A digit's products with the
    planes add up in int32 where no sum can leave it: |columns| <= 2^14 and |digit| <= 64
    bound each by k 2^20, and so do the partial sums of Horner's scheme. The digits add up
    in int64, unless there is one: its sums come back in their own type."""
    torch = loaded_torch()
    k = planes[0][0].shape[1]
    narrow = np.int32 if k * PLANES_LIMIT * DIGIT_MAX < 1 << 31 else np.int64
    lhs = [(torch.from_numpy(np.ascontiguousarray(plane)), offset) for plane, offset in planes]

    def product(digit: np.ndarray) -> np.ndarray:
        rhs = torch.from_numpy(digit)
        return _weighted_sum(((torch._int_mm(a, rhs).numpy(), o) for a, o in lhs), narrow)

    wide = narrow if len(digits) == 1 else np.int64
    return _weighted_sum(((product(d), o) for d, o in reversed(digits)), wide)


def _weighted_sum(terms: Iterable[tuple[np.ndarray, int]], dtype) -> np.ndarray:
    """sum of term << offset over (term, offset) pairs of falling offsets, in `dtype`, by
    Horner's scheme (in place, on the first term where it has that type already)."""
    total, previous = None, 0
    for term, offset in terms:
        if total is None:
            total = term.astype(dtype, copy=False)
        else:
            total *= 1 << (previous - offset)  # NumPy multiplies in place faster than it shifts
            total += term
        previous = offset
    if previous:
        total *= 1 << previous
    return total
