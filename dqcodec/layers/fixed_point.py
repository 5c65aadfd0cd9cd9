"""Fixed-point building blocks of the integer prior: exact integer convolutions, integer
rescaling, and lookup tables derived the same way on every machine.

Exactness rests on two rules:

* Tensor arithmetic is integer arithmetic: int8 x int8 products summed in int32 (a GEMM,
  whatever its order of summation or its vector width), then int64 for rescaling. No
  floating-point value ever reaches a probability.
* Every table and multiplier derived from the float weights uses only float64 operations
  that IEEE 754 rounds correctly (+, -, *, /, ldexp, rint, comparisons) in a fixed order on
  NumPy arrays; `exp` and `erf` come from `exp64`/`erf64` below instead of a math library,
  whose last bits differ between platforms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

INT8_MIN, INT8_MAX = -128, 127
WIDE_BITS = 16  # wide (pre-activation) values index lookup tables of 2^16 entries
WIDE_MAX = (1 << (WIDE_BITS - 1)) - 1
MULTIPLIER_BITS = 23  # rescaling multipliers below 2^23: |acc * m| stays far inside int64
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
    r = (x - k * _LN2_HI) - k * _LN2_LO  # |r| <= 0.35
    term = np.ones_like(r)
    total = np.ones_like(r)
    for n in range(1, 18):
        term = term * r / n
        total = total + term
    return np.ldexp(total, k.astype(np.int32))


def erf64(x: np.ndarray) -> np.ndarray:
    """erf(x) from exp64 (Abramowitz & Stegun 7.1.26, absolute error < 1.5e-7)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = (
        (((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592
    ) * t
    return np.sign(x) * (1.0 - poly * exp64(-a * a))


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


def gelu_table(source: Format, target: Format) -> Tensor:
    """Table over the 2^16 wide values of `source`: GELU into `target` (int8, or int16 for
    formats over 8 bits)."""
    wide = np.arange(-WIDE_MAX - 1, WIDE_MAX + 1, dtype=np.float64)
    q = np.rint(gelu64(wide * source.scale) / target.scale) + target.zero
    dtype = np.int8 if INT8_MIN <= target.low and target.high <= INT8_MAX else np.int16
    return torch.from_numpy(np.clip(q, target.low, target.high).astype(dtype))


def lookup(table: Tensor, index: Tensor) -> Tensor:
    """table[index] for a 1-D table (index_select: several times faster than indexing)."""
    return table.index_select(0, index.reshape(-1).to(torch.int32)).reshape(index.shape)


def apply_table(table: Tensor, wide: Tensor) -> Tensor:
    index = wide.to(torch.int32, copy=True).clamp_(-WIDE_MAX - 1, WIDE_MAX).add_(WIDE_MAX + 1)
    return lookup(table, index)


# -- integer GEMM and convolution ------------------------------------------------------------


def int_matmul(a: Tensor, b: Tensor) -> Tensor:
    """(m, k) int8 @ (k, n) int8 -> (m, n) int32, exactly.

    torch._int_mm where it takes the shapes; otherwise a float64 GEMM of the same integers,
    exact because no partial sum can exceed k * 128 * 128 < 2^53."""
    m, k = a.shape
    n = b.shape[1]
    if m > 16 and k % 8 == 0 and n % 8 == 0 and k >= 16:
        try:
            return torch._int_mm(a, b)
        except (RuntimeError, AttributeError):
            pass
    return (a.double() @ b.double()).to(torch.int32)


def _split(value):
    """hi, lo with value = hi * 256 + lo, lo in [-128, 127] (tensors or ints)."""
    high = (value + 128) >> 8
    return high, value - (high << 8)


def planes(x: Tensor) -> list[tuple[Tensor, int]]:
    """An int8 tensor, or an int16 one of at most 15 bits, as int8 planes with their bit
    offsets: x = sum plane << offset (hi * 256 + lo, hi in [-64, 64]), so every GEMM stays
    int8 x int8."""
    if x.dtype == torch.int8:
        return [(x, 0)]
    high, low = _split(x)  # in int16: 15-bit values leave room for the +128
    return [(high.to(torch.int8), 8), (low.to(torch.int8), 0)]


def plane_values(x: Tensor, value: int) -> list[int]:
    """`value` (a padding value of x) split as `planes(x)` splits x."""
    return [value] if x.dtype == torch.int8 else list(_split(value))


def weight_digits(w: Tensor) -> list[tuple[Tensor, int]]:
    """Integer weights as int8 digits in base 128 with their bit offsets, every digit within
    +-64: w = sum digit << offset.

    int8 GEMMs on CPUs without VNNI (oneDNN's SSE4.1 and AVX2 kernels) add pairs of u8 x s8
    products in saturating int16: with |weight| <= 64 no pair can exceed 2 * 255 * 64 < 2^15,
    so every kernel sums exactly (tests/test_integer_prior.py runs those kernels)."""
    digits, rest, offset = [], w.to(torch.int64), 0
    while int(rest.abs().max()) > 64:
        high = (rest + 64) >> 7
        digits.append(((rest - (high << 7)).to(torch.int8), offset))
        rest, offset = high, offset + 7
    digits.append((rest.to(torch.int8), offset))
    return digits


@dataclass
class IntConv:
    """A convolution over int8/int16 activations in channels-last layout (B, H, W, C):
    weight digits (k*k*Cin, Cout) int8 in (ky, kx, cin) row order with their bit offsets, bias
    in accumulator units, and a per-output-channel rescale (acc + bias) * m >> shift into the
    output format."""

    weights: list  # digits (int8 (k*k*Cin, Cout) within +-64, bit offset), see weight_digits
    bias: Tensor  # int64 (Cout,)
    multiplier: Tensor  # int64 (Cout,)
    shift: int
    kernel: int
    low: Tensor  # int64 (Cout,) output clamp
    high: Tensor
    offset: Tensor  # int64 (Cout,) the output format's zero point
    upsample: int = 1  # 2: a stride-2 transposed convolution (zeros inserted, then this conv)

    def __post_init__(self):
        # (acc + bias) * m + half = acc * m + rounded_bias; the clamp before adding the offset
        self.rounded_bias = self.bias * self.multiplier + (1 << (self.shift - 1))
        self.scaled_low, self.scaled_high = self.low - self.offset, self.high - self.offset

    def accumulate(
        self, x: Tensor, zero: int, at: Tensor | None = None, rescaled: bool = False
    ) -> Tensor:
        """int64 (B, H', W', Cout) sums of weight x input, `zero` (the input's real 0) in the
        padding and between upsampled positions; with `at` (H', W') bool, only at those
        positions: (B, n, Cout) in row-major order. `rescaled`: each block of rows goes
        through `rescale` as soon as it is summed, so no full-size int64 map is ever held."""
        if self.upsample > 1:
            b, h, w, c = x.shape
            u = self.upsample
            spread = x.new_full((b, h * u, w * u, c), zero)
            spread[:, ::u, ::u] = x  # its trailing zeros are the output padding
            x = spread
        pad = self.kernel // 2
        b, h, w, c = x.shape
        out_h, out_w = h + 2 * pad - self.kernel + 1, w + 2 * pad - self.kernel + 1
        cout = self.weights[0][0].shape[1]
        dtype = torch.int32 if rescaled else torch.int64
        if at is not None and not bool(at.any()) or out_h * out_w == 0:
            shape = (b, 0, cout) if at is not None else (b, out_h, out_w, cout)
            return torch.zeros(shape, dtype=dtype)
        padded = []
        for (plane, offset), fill in zip(planes(x), plane_values(x, zero)):
            if pad:
                plane = F.pad(plane.permute(0, 3, 1, 2), (pad, pad, pad, pad), value=fill)
                plane = plane.permute(0, 2, 3, 1)
            padded.append((plane, offset))
        if at is not None:
            out = torch.empty(b, int(at.sum()), cout, dtype=dtype)
        else:
            out = torch.empty(b, out_h, out_w, cout, dtype=dtype)
        rows, filled = max(1, ROWS_PER_BLOCK // max(1, b * out_w)), 0
        for r in range(0, out_h, rows):
            r_end = min(out_h, r + rows)
            if at is not None and not bool(at[r:r_end].any()):
                continue  # rows outside a band's centre (IntegerCodePrior.params)
            block = None
            for plane, offset in padded:
                cols = self._columns(plane, r, r_end, out_w)
                cols = cols[:, at[r:r_end]] if at is not None else cols
                for weight, weight_offset in self.weights:
                    part = int_matmul(cols.reshape(-1, cols.shape[-1]), weight).to(torch.int64)
                    if offset + weight_offset:
                        part <<= offset + weight_offset
                    block = part if block is None else block.add_(part)
            block = block.reshape(*cols.shape[:-1], -1)
            block = self.rescale(block) if rescaled else block
            if at is not None:
                out[:, filled : filled + block.shape[1]] = block
                filled += block.shape[1]
            else:
                out[:, r:r_end] = block
        return out

    def _columns(self, plane: Tensor, r: int, r_end: int, out_w: int) -> Tensor:
        """im2col of output rows r..r_end: (B, rows, W', k*k*C) in (ky, kx, c) order."""
        if self.kernel == 1:
            return plane[:, r:r_end]
        return torch.cat(
            [
                plane[:, r + dy : r_end + dy, dx : dx + out_w]
                for dy in range(self.kernel)
                for dx in range(self.kernel)
            ],
            -1,
        )

    def rescale(self, acc: Tensor) -> Tensor:
        """Outputs in the output format, clamped to its range: int32, since every format
        fits in 16 bits, which halves the memory of the wide activations at large sizes."""
        scaled = acc.mul_(self.multiplier).add_(self.rounded_bias) >> self.shift
        return scaled.clamp_(self.scaled_low, self.scaled_high).add_(self.offset).to(torch.int32)

    def __call__(self, x: Tensor, zero: int, at: Tensor | None = None) -> Tensor:
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
    weight_t = torch.from_numpy(q.transpose(2, 3, 1, 0).reshape(-1, q.shape[0]).astype(np.int64))
    cout = q.shape[0]
    low, high = (
        limits
        if limits is not None
        else (np.full(cout, out_format.low), np.full(cout, out_format.high))
    )
    as_int64 = lambda v: torch.from_numpy(np.asarray(v).astype(np.int64))  # noqa: E731
    return IntConv(
        [(d.contiguous(), o) for d, o in weight_digits(weight_t)],
        as_int64(bias_units),
        torch.from_numpy(m),
        shift,
        q.shape[-1],
        as_int64(low),
        as_int64(high),
        as_int64(np.full(cout, out_format.zero)),
        2 if transposed else 1,
    )
