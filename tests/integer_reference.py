"""An independent NumPy int64 implementation of the integer prior's arithmetic, for the tests.

It reads the integers an IntegerModel holds (weights, biases, multipliers, tables) and
recomputes every pass's frequency table with NumPy's integer arithmetic only (no BLAS, no
torch kernel), written from the description in dqcodec/entropy_models/integer_prior.py rather
than from its code: direct sums over kernel taps, explicit zero insertion for transposed
convolutions.
"""

from __future__ import annotations

import numpy as np

from dqcodec.entropy_models.passes import pass_schedule


def _i64(t) -> np.ndarray:
    return np.asarray(t).astype(np.int64)


def conv(x: np.ndarray, layer, zero: int) -> np.ndarray:
    """x (H, W, C) int64 -> (H', W', Cout) int64, rescaled and clamped."""
    weight = _i64(layer.weight)  # (k*k*C, Cout)
    k = layer.kernel
    if layer.upsample > 1:
        h, w, c = x.shape
        spread = np.full((h * layer.upsample, w * layer.upsample, c), zero, dtype=np.int64)
        spread[:: layer.upsample, :: layer.upsample] = x
        x = spread
    h, w, c = x.shape
    pad = k // 2
    padded = np.full((h + 2 * pad, w + 2 * pad, c), zero, dtype=np.int64)
    padded[pad : pad + h, pad : pad + w] = x
    acc = np.zeros((h, w, weight.shape[1]), dtype=np.int64)
    for dy in range(k):
        for dx in range(k):
            tap = weight[(dy * k + dx) * c : (dy * k + dx + 1) * c]
            acc += padded[dy : dy + h, dx : dx + w] @ tap
    out = (
        (acc + _i64(layer.bias)) * _i64(layer.multiplier) + (1 << (layer.shift - 1))
    ) >> layer.shift
    return np.clip(out + _i64(layer.offset), _i64(layer.low), _i64(layer.high))


def table(t, wide: np.ndarray) -> np.ndarray:
    return _i64(t)[np.clip(wide, -32768, 32767) + 32768]


def gelu_conv(step, wide: np.ndarray) -> np.ndarray:
    return conv(table(step.table, wide), step.conv, step.zero)


def frequencies(
    logits: np.ndarray, exp_table: np.ndarray, exp_bits: int = 26, total_bits: int = 24
) -> np.ndarray:
    k = logits.shape[-1]
    delta = np.minimum(logits.max(-1, keepdims=True) - logits, len(exp_table) - 1)
    weights = exp_table[delta]
    total = (1 << total_bits) - k
    q = (total << exp_bits) // weights.sum(-1, keepdims=True)
    freqs = (weights * q) >> exp_bits
    freqs[..., -1] += total - freqs.sum(-1)
    return freqs


def precision_parts(precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The float64 precision table as integer mantissa and right shift."""
    frac, exponent = np.frexp(precision)
    mantissa = np.ldexp(frac, 16).astype(np.int64)
    shift = np.where(mantissa == 0, 0, 16 - exponent).astype(np.int64)
    return mantissa, shift


def level_tables(
    prior, cond: np.ndarray, indices: np.ndarray, exp_table: np.ndarray
) -> list[np.ndarray]:
    """Frequency tables (G_s, n, K) of every pass, for known indices (G, H, W) of one image."""
    gs, d, sc = prior.groups_per_slice, prior.dim, prior.slice_channels
    groups, h, w = indices.shape
    values = _i64(prior.code_values)
    codes = np.zeros((h, w, groups * d), dtype=np.int64)
    features = table(prior.features, conv(cond, prior.trunk, prior.cond_zero))
    anchors = (np.arange(h)[:, None] + np.arange(w)[None, :]) % 2 == 0
    out = []
    for p in pass_schedule(len(prior.slices)):
        s, sl = p.slice_index, prior.slices[p.slice_index]
        stream = conv(features, sl.proj, prior.features_zero)
        if sl.channel is not None:
            stream = stream + conv(codes[..., : s * sc], sl.channel, 0)
        if p.anchors:
            stream = stream + _i64(sl.spatial_bias)
        else:
            stream = stream + conv(codes[..., s * sc : (s + 1) * sc], sl.spatial, 0)
        for to_middle, back in sl.blocks:
            stream = stream + gelu_conv(back, gelu_conv(to_middle, stream))
        params = gelu_conv(sl.head[1], gelu_conv(sl.head[0], stream)).reshape(h, w, gs, 2, d)
        free = None if sl.free is None else gelu_conv(sl.free, stream).reshape(h, w, gs, -1)
        positions = anchors if p.anchors else ~anchors
        mean = params[positions][:, :, 0].transpose(1, 0, 2)  # (G_s, n, d)
        step = params[positions][:, :, 1].transpose(1, 0, 2) + 256
        g0 = s * gs
        units = _i64(prior.code_units)[g0 : g0 + gs]  # (G_s, K, d)
        g_index = np.arange(gs)[:, None, None]
        d_index = np.arange(d)[None, None, :]
        mantissa, shift = precision_parts(np.asarray(prior.precision)[g0 : g0 + gs])
        mantissa, shift = (
            mantissa[g_index, d_index, step],
            shift[g_index, d_index, step],
        )  # (G_s, n, d)
        # the position's largest precision sets t: its p gets 23 bits
        exponent = np.where(mantissa > 0, 16 - shift, 0)
        largest = np.argmax(
            np.where(mantissa > 0, mantissa.astype(np.float64) * 2.0**-shift, -1.0), -1
        )
        t = 23 - np.take_along_axis(exponent, largest[..., None], -1)  # (G_s, n, 1)
        up = t - shift
        pq = np.where(up >= 0, mantissa << np.maximum(up, 0), mantissa >> np.maximum(-up, 0))
        m = np.clip(mean, -32767, 32767)
        terms = pq[:, :, None] * (
            units[:, None] ** 2 - 2 * m[:, :, None] * units[:, None]
        )  # (G_s, n, K, d)
        logits = _i64(prior.code_bias)[g0 : g0 + gs][:, None] - (terms.sum(-1) >> t)
        if free is not None:
            logits = logits + free[positions].transpose(1, 0, 2)
        out.append(frequencies(logits, exp_table))
        chosen = indices[g0 : g0 + gs]  # (G_s, H, W)
        code = values[g0 : g0 + gs][np.arange(gs)[:, None, None], chosen]  # (G_s, H, W, d)
        code = code.transpose(1, 2, 0, 3).reshape(h, w, gs * d)
        codes[..., s * sc : (s + 1) * sc] = np.where(
            positions[..., None], code, codes[..., s * sc : (s + 1) * sc]
        )
    return out


def model_tables(
    integer, top: np.ndarray, bottom: np.ndarray, exp_table: np.ndarray
) -> list[np.ndarray]:
    """Every pass's table, top level then bottom, for one image's indices (G, H, W)."""
    values = _i64(integer.condition.code_values)
    groups, h, w = top.shape
    top_codes = values[np.arange(groups)[:, None, None], top]  # (G, H, W, d)
    x = top_codes.transpose(1, 2, 0, 3).reshape(h, w, -1)
    cond = gelu_conv(integer.condition.second, conv(x, integer.condition.first, 0))
    ones = np.ones((h, w, 1), dtype=np.int64)
    return level_tables(integer.top, ones, top, exp_table) + level_tables(
        integer.bottom, cond, bottom, exp_table
    )
