"""Fixed-point building blocks of the integer prior: exact integer convolutions, integer
rescaling, and lookup tables derived the same way on every machine.

Exactness rests on two rules:

* Array arithmetic is integer arithmetic. A convolution is a GEMM of integers carried in
  float32 where no sum of its products' magnitudes reaches 2^24, else in float64 (2^53):
  every partial sum is then an exact integer, whatever the BLAS's order of summation, vector
  width, FMA or thread count. Rescaling is int64. No rounded floating-point value ever
  reaches a probability. (A BLAS computing in reduced precision, TF32 or bf16, would break
  this; NumPy's CPU BLASes do not.) In a program that has loaded torch the same sums come
  from torch's int8 GEMM (int8_gemm.py), several times faster on CPUs with VNNI.
* Every table and multiplier derived from the float weights uses only float64 operations
  that IEEE 754 rounds correctly (+, -, *, /, ldexp, rint, comparisons) in a fixed order on
  NumPy arrays; `exp` and `erf` come from `exp64`/`erf64` below instead of a math library,
  whose last bits differ between platforms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from dqcodec.layers import int8_gemm
from dqcodec.runtime import parallel_map, torch_threads, workers

INT8_MIN, INT8_MAX = -128, 127
WIDE_BITS = 16  # wide (pre-activation) values index lookup tables of 2^16 entries
WIDE_MAX = (1 << (WIDE_BITS - 1)) - 1
MULTIPLIER_BITS = 23  # rescaling multipliers below 2^23: |acc * m| stays far inside int64
FLOAT32_EXACT = 1 << 24  # float32 holds every integer below this exactly; float64: 2^53
FLOAT64_EXACT = 1 << 53
# output positions per GEMM: small blocks keep large decodes in less memory, and are no slower
ROWS_PER_BLOCK = 1 << 11


# -- deterministic float64 elementary functions ---------------------------------------------

_LN2_HI = 0.6931471803691238  # Cody-Waite split of ln 2: k * _LN2_HI is exact for |k| < 2^20
_LN2_LO = 1.9082149292705877e-10


def exp64(x: np.ndarray) -> np.ndarray:
    """exp(x) in float64 from correctly rounded operations only (relative error < 1e-15),
    so every machine gets the same bits; NumPy's own exp differs with the CPU's SIMD."""
    x = np.asarray(x, dtype=np.float64)
    k = np.rint(x * (1.0 / 0.6931471805599453))
    r = x - k * _LN2_HI
    r -= k * _LN2_LO  # |r| <= 0.35
    term = np.ones_like(r)
    total = np.ones_like(r)
    for n in range(1, 18):  # in place, in the order ((term * r) / n) + total
        term *= r
        term /= n
        total += term
    return np.ldexp(total, k.astype(np.int32))


def erf64(x: np.ndarray, exp: Callable[[np.ndarray], np.ndarray] = exp64) -> np.ndarray:
    """erf(x) in float64 by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), with exp64
    (the same bits on every machine) or another exp."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = (
        (((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592
    ) * t
    return np.sign(x) * (1.0 - poly * exp(-a * a))


def gelu64(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf64(x * 0.7071067811865476))


def multipliers(ratios: np.ndarray, bits: int = MULTIPLIER_BITS) -> tuple[np.ndarray, int]:
    """Integer m and shift S with m / 2^S ~ ratios (>= 0), m < 2^min(bits, MULTIPLIER_BITS)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    _, exponent = np.frexp(ratios.max())
    shift = min(bits, MULTIPLIER_BITS) - int(exponent)
    if shift < 1 or shift > 62:
        raise ValueError(f"rescaling ratio {ratios.max():g} is out of range")
    return np.rint(np.ldexp(ratios, shift)).astype(np.int64), shift


# -- activation formats ------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """real = scale * (q - zero), q an integer in [low, high]."""

    scale: float
    zero: int = 0
    low: int = INT8_MIN
    high: int = INT8_MAX

    @staticmethod
    def symmetric(max_abs: float, bits: int = 8) -> Format:
        top = (1 << (bits - 1)) - 1
        return Format(max(float(max_abs), 1e-12) / top, 0, -top, top)

    @staticmethod
    def wide(max_abs: float) -> Format:
        # one bit of headroom over the calibrated range
        return Format(max(2.0 * float(max_abs), 1e-12) / WIDE_MAX, 0, -WIDE_MAX, WIDE_MAX)

    @staticmethod
    def after_gelu(max_value: float, bits: int = 8) -> Format:
        """GELU's outputs lie in [-0.17, max]: an asymmetric range uses every level."""
        if not 2 <= bits <= 15:
            raise ValueError(f"activations take 2 to 15 bits, not {bits}")
        low = -0.17
        levels = (1 << bits) - 1
        scale = (max(float(max_value), 0.0) - low) / levels
        first = -(1 << (bits - 1))
        return Format(scale, first + int(np.rint(-low / scale)), first, first + levels)


def gelu_table(source: Format, target: Format) -> np.ndarray:
    """Table over the 2^16 wide values of `source`: GELU into `target` (int8, or int16 for
    formats over 8 bits)."""
    wide = np.arange(-WIDE_MAX - 1, WIDE_MAX + 1, dtype=np.float64)
    q = np.rint(gelu64(wide * source.scale) / target.scale) + target.zero
    dtype = np.int8 if INT8_MIN <= target.low and target.high <= INT8_MAX else np.int16
    return np.clip(q, target.low, target.high).astype(dtype)


def apply_table(table: np.ndarray, wide: np.ndarray) -> np.ndarray:
    """table[wide] for wide values, clamped to the table's 2^16 entries (take's clip mode
    clamps the index, in one pass with the lookup)."""
    return table.take(np.add(wide, WIDE_MAX + 1, dtype=np.intp), mode="clip")


# -- integer convolution -----------------------------------------------------------------------


@dataclass
class IntConv:
    """A convolution over integer activations in channels-last layout (B, H, W, C): integer
    weights (k*k*Cin, Cout) in (ky, kx, cin) row order, bias in accumulator units, and a
    per-output-channel rescale (acc + bias) * m >> shift into the output format."""

    weight: np.ndarray  # int64 (k*k*Cin, Cout)
    bias: np.ndarray  # int64 (Cout,)
    multiplier: np.ndarray  # int64 (Cout,)
    shift: int
    kernel: int
    low: np.ndarray  # int64 (Cout,) output clamp
    high: np.ndarray
    offset: np.ndarray  # int64 (Cout,) the output format's zero point
    input_limit: int  # the largest |input value| the layer is built for
    bits: int  # the weights' width: integers within +-(2^(bits-1) - 1)
    upsample: int = 1  # 2: a stride-2 transposed convolution (zeros inserted, then this conv)

    def __post_init__(self):
        # (acc + bias) * m + half = acc * m + rounded_bias; the clamp before adding the offset
        self.rounded_bias = self.bias * self.multiplier + (1 << (self.shift - 1))
        self.scaled_low, self.scaled_high = self.low - self.offset, self.high - self.offset
        self.sum_limits = self._sum_limits()
        self.offset32 = self.offset.astype(np.int32) if self.offset.any() else None
        largest_sum = int(np.abs(self.weight).sum(0).max()) * self.input_limit
        if largest_sum >= FLOAT64_EXACT:
            raise ValueError("integer convolution too wide for an exact float64 GEMM")
        self.gemm_dtype = np.float32 if largest_sum < FLOAT32_EXACT else np.float64

    def accumulate(
        self, x: np.ndarray, zero: int, at: np.ndarray | None = None, rescaled: bool = False
    ) -> np.ndarray:
        """int64 (B, H', W', Cout) sums of weight x input, `zero` (the input's real 0) in the
        padding and between upsampled positions; with `at` (H', W') bool, only at those
        positions: (B, n, Cout) in row-major order. `rescaled`: each block of rows goes
        through `rescale` as soon as it is summed, so no full-size int64 map is ever held."""
        if self.upsample > 1:
            b, h, w, c = x.shape
            u = self.upsample
            spread = np.full((b, h * u, w * u, c), zero, dtype=x.dtype)
            spread[:, ::u, ::u] = x  # its trailing zeros are the output padding
            x = spread
        pad = self.kernel // 2
        b, h, w, c = x.shape
        out_h, out_w = h + 2 * pad - self.kernel + 1, w + 2 * pad - self.kernel + 1
        cout = self.weight.shape[1]
        dtype = np.int32 if rescaled else np.int64
        if at is not None and not at.any() or out_h * out_w == 0:
            shape = (b, 0, cout) if at is not None else (b, out_h, out_w, cout)
            return np.zeros(shape, dtype=dtype)
        if pad:
            x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=zero)
        if at is not None:
            out = np.empty((b, int(at.sum()), cout), dtype=dtype)
        else:
            out = np.empty((b, out_h, out_w, cout), dtype=dtype)
        # torch's int8 GEMMs are small (about 0.1 ms): one thread runs the blocks in turn. Split
        # over an OpenMP team they ran slower, and the team's threads then spun on the core
        # that the logits' threads need next.
        int8 = self.int8_gemm()
        planes = int8_gemm.planes(x) if int8 else [(x, 0)]
        threads = 1 if int8 else workers()
        rows = max(1, min(ROWS_PER_BLOCK // max(1, b * out_w), -(-out_h // threads)))
        starts = range(0, out_h, rows)
        counts = [0] + [int(at[r : r + rows].sum()) for r in starts] if at is not None else []
        filled = np.cumsum(counts)  # where each block's positions go in `out`, with `at`

        def block(i: int) -> None:  # blocks write disjoint parts of `out`: one per thread
            r, r_end = starts[i], min(out_h, starts[i] + rows)
            if at is not None and filled[i] == filled[i + 1]:
                return  # rows outside a band's centre (IntegerCodePrior.params)
            cols = [(self._columns(plane, r, r_end, out_w, at), bit) for plane, bit in planes]
            if int8:
                sums = int8_gemm.matmul(cols, self.weight_digits)
            else:
                sums = self.gemm(cols[0][0])
            target = out[:, filled[i] : filled[i + 1]] if at is not None else out[:, r:r_end]
            if rescaled:
                self.rescale(sums.reshape(target.shape), out=target)
            else:
                target[...] = sums.reshape(target.shape)

        if int8:
            with torch_threads(1):
                for i in range(len(starts)):
                    block(i)
        else:
            parallel_map(block, range(len(starts)))
        return out

    def int8_gemm(self) -> bool:
        """Whether the GEMMs run on torch's int8 GEMM: where the program has loaded a torch
        that has one, for inputs of up to 15 bits."""
        return self.input_limit <= int8_gemm.PLANES_LIMIT and int8_gemm.available()

    def gemm(self, cols: np.ndarray) -> np.ndarray:
        """int64 (m, Cout): integer cols (m, k*k*Cin) @ the weights in the GEMM's float type,
        exactly (module notes)."""
        return (cols.astype(self.gemm_dtype) @ self.gemm_weight).astype(np.int64)

    # the weights as each GEMM reads them, made on first use: a program runs one of the two
    @cached_property
    def gemm_weight(self) -> np.ndarray:
        return self.weight.astype(self.gemm_dtype)

    @cached_property
    def weight_digits(self) -> list:
        return int8_gemm.weight_digits(self.weight)

    def _columns(
        self, x: np.ndarray, r: int, r_end: int, out_w: int, at: np.ndarray | None
    ) -> np.ndarray:
        """im2col of output rows r..r_end, at the positions `at` where given: (m, k*k*C) in
        (ky, kx, c) order, m positions in row-major order; one copy out of a view of the
        windows."""
        k = self.kernel
        if k == 1:
            windows = x[:, r:r_end]
        else:
            rows = x[:, r : r_end + k - 1, : out_w + k - 1]
            windows = np.lib.stride_tricks.sliding_window_view(rows, (k, k), axis=(1, 2))
            windows = windows.transpose(0, 1, 2, 4, 5, 3)  # (B, rows, W', ky, kx, C)
        if at is not None:
            windows = windows[:, at[r:r_end]]
        cols = windows.reshape(-1, k * k * x.shape[-1])
        # a map one output wide needs no copy, and gets a read-only view of the windows
        return cols if cols.flags.writeable else cols.copy()

    def _sum_limits(self) -> dict | None:
        """Each channel's range of sums whose outputs lie within [low, high], by the sums'
        dtype, where one step of a sum moves the output by at most one level (1 <= m <=
        2^shift): clamping the sums to it gives exactly the outputs that clamping the outputs
        gives, already within the int32 output. None where a step can skip levels, or where
        the bounds' arithmetic could leave int64 (|rounded_bias| < 2^62 by int_conv)."""
        m, unit = self.multiplier, 1 << self.shift
        reach = int(max(np.abs(self.scaled_low).max(), np.abs(self.scaled_high).max())) + 1
        if not ((1 <= m) & (m <= unit)).all() or reach << self.shift >= 1 << 61:
            return None
        # the least sum whose output reaches low, the largest whose output stays within high
        low = -((self.rounded_bias - self.scaled_low * unit) // m)
        high = ((self.scaled_high + 1) * unit - self.rounded_bias - 1) // m
        limits = {np.dtype(np.int64): (low, high)}
        narrow = np.iinfo(np.int32)
        if (low <= narrow.max).all() and (high >= narrow.min).all():  # int32 sums clamp alike
            limits[np.dtype(np.int32)] = (
                np.maximum(low, narrow.min).astype(np.int32),
                np.minimum(high, narrow.max).astype(np.int32),
            )
        return limits

    def rescale(self, acc: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Outputs in the output format, clamped to its range, into `out` where given: int32,
        since every format fits in 16 bits, which halves the memory of the wide activations
        at large sizes. `acc` (int32 or int64 sums) is overwritten."""
        if out is None:
            out = np.empty(acc.shape, np.int32)
        if self.sum_limits is None:
            return self._rescale_then_clamp(acc.astype(np.int64, copy=False), out)
        if acc.dtype not in self.sum_limits:
            acc = acc.astype(np.int64)
        low, high = self.sum_limits[acc.dtype]
        np.maximum(acc, low, out=acc)
        np.minimum(acc, high, out=acc)
        scaled = np.multiply(acc, self.multiplier, out=acc if acc.dtype == np.int64 else None)
        scaled += self.rounded_bias
        # NumPy shifts int64 in place at less than half the speed of into another array
        np.right_shift(scaled, self.shift, out=out, casting="unsafe")
        if self.offset32 is not None:
            out += self.offset32
        return out

    def _rescale_then_clamp(self, acc: np.ndarray, out: np.ndarray) -> np.ndarray:
        acc *= self.multiplier
        acc += self.rounded_bias
        shifted = np.right_shift(acc, self.shift)
        np.maximum(shifted, self.scaled_low, out=shifted)
        np.minimum(shifted, self.scaled_high, out=shifted)
        return np.add(shifted, self.offset, out=out, casting="unsafe")

    def __call__(self, x: np.ndarray, zero: int, at: np.ndarray | None = None) -> np.ndarray:
        return self.accumulate(x, zero, at, rescaled=True)


def quantize_weight(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel quantization of (Cout, ...) float64 weights:
    integers in +-(2^(bits-1) - 1) and each channel's scale."""
    if not 2 <= bits <= 15:
        raise ValueError(f"weights take 2 to 15 bits, not {bits}")
    top = (1 << (bits - 1)) - 1
    flat = weight.reshape(weight.shape[0], -1)
    largest = np.abs(flat).max(1)
    scale = np.where(largest > 0, largest, 1.0) / top  # an all-zero channel stays 0 at any scale
    q = np.clip(np.rint(flat / scale[:, None]), -top, top)
    return q.reshape(weight.shape), scale


def int_conv(
    weight: np.ndarray,
    bias: np.ndarray | None,
    source: Format,
    in_scale: np.ndarray | None,
    out_scale: np.ndarray,
    out_format: Format,
    bits: int,
    transposed: bool = False,
    extra_input: np.ndarray | None = None,
    limits: tuple[np.ndarray, np.ndarray] | None = None,
) -> IntConv:
    """Build an IntConv from float64 weights (Cout, Cin, k, k), or (Cin, Cout, k, k) for a
    stride-2 transposed convolution, with `bits`-bit weights (at most 15).

    in_scale (Cin,): real input = in_scale * source.scale * (q - zero) per channel (None: 1);
    out_scale (Cout,): the real value of one output step per channel (the output format's
    scale, or finer per-channel units). extra_input (Cin,), for a 1x1 convolution: a real
    vector added to the input at every position, folded into the bias in integers. limits:
    per-channel output bounds (low, high) in place of the format's."""
    if transposed:  # the equivalent convolution over the zero-spread input
        weight = np.flip(weight, (2, 3)).transpose(1, 0, 2, 3)
    if in_scale is not None:
        weight = weight * in_scale[None, :, None, None]
    q, w_scale = quantize_weight(weight, bits)
    acc_scale = w_scale * source.scale  # real value of one accumulator unit, per channel
    total = np.zeros(q.shape[0]) if bias is None else bias.astype(np.float64)
    flat = q.reshape(q.shape[0], -1)
    # the input's zero point: sum w (q - z) = sum w q - z sum w, padding included
    bias_units = np.rint(total / acc_scale) - source.zero * flat.sum(1)
    if extra_input is not None:
        steps = np.rint(extra_input / (source.scale * (1.0 if in_scale is None else in_scale)))
        bias_units = bias_units + (flat.astype(np.int64) @ steps.astype(np.int64))
    # |acc + bias| * m must stay inside int64
    largest = np.abs(flat).sum(1).max() * max(
        abs(source.low - source.zero), abs(source.high - source.zero)
    )
    largest = largest + np.abs(bias_units).max()
    m, shift = multipliers(acc_scale / out_scale, 61 - int(np.frexp(largest)[1]))
    cout = q.shape[0]
    low, high = (
        limits
        if limits is not None
        else (np.full(cout, out_format.low), np.full(cout, out_format.high))
    )
    as_int64 = lambda v: np.asarray(v).astype(np.int64)  # noqa: E731
    return IntConv(
        as_int64(q.transpose(2, 3, 1, 0).reshape(-1, cout)),
        as_int64(bias_units),
        m,
        shift,
        q.shape[-1],
        as_int64(low),
        as_int64(high),
        as_int64(np.full(cout, out_format.zero)),
        max(abs(source.low), abs(source.high), abs(source.zero)),
        bits,
        2 if transposed else 1,
    )
