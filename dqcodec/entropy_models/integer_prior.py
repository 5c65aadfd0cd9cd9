"""The prior in integer arithmetic: what makes every probability the range coder sees, so a
file decodes bit for bit on any CPU, thread count, BLAS or GPU.

An `IntegerModel` is derived from a float `DQModel`'s weights, one rate point at a time, by
`derive(weights, config, point, calibration, policy)`: weights become per-channel integers at the
policy's bit widths, activations 8- to 15-bit integers with calibrated ranges
(`calibration.py`), sums and residual streams wide integers, GELU and exp lookup tables (see
layers/fixed_point.py for why the derivation gives the same integers everywhere). It mirrors
`CodePrior` and the top level's synthesis `top_s`, which conditions the bottom level:

    top indices -> codes (int8) -> top_s -> cond (int8) -> bottom prior
    prior: GELU(trunk(cond)) -> per slice: proj + spatial(current) + channel(previous)
           -> residual blocks -> head -> mean (code units), log-scale (1/64 steps)
    logits = code bias - sum_d precision(log-scale) (code - mean)^2 / 2   (2^-10 nat units)
    frequencies = exp table(max - logits), scaled to sum to 2^24 - K   (range_coding.py)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from dqcodec.entropy_models.passes import Pass, anchor_mask, pass_schedule, row_blocks
from dqcodec.layers.fixed_point import (
    WIDE_MAX,
    Format,
    IntConv,
    apply_table,
    exp64,
    gelu_table,
    int_conv,
)
from dqcodec.models.config import LevelConfig, ModelConfig
from dqcodec.runtime import parallel_map, workers

LOGIT_BITS = 10  # logits in units of 2^-10 nats
CODE_BITS = 12  # codebook coordinates in units of 2^-12 of their group's largest
LOG_SCALE_STEPS = 64  # log-scales in [-4, 4] (the float prior's clamp) in steps of 1/64
PRECISION_BITS = 16  # mantissa of the precision table (value = mantissa * 2^-exponent)
PRECISION_PRODUCT_BITS = 23  # the largest precision of a position, in the logits' matmul
MEAN_LIMIT = WIDE_MAX  # the head's output range
EXP_RANGE = 24  # nats below the most likely code at which a weight becomes 0
EXP_BITS = 26  # the most likely code weighs 2^26
TOTAL_BITS = 24  # constriction's range coder: frequencies (+1 each) sum to 2^24
BAND_POSITIONS = 1 << 14  # latent positions per band of `params` at large sizes
BAND_ROWS_PER_REACH = 4  # and rows per row of reach: no band computes over 1.5x its rows
# kodim23, in shares of 2^18 logits (2 MB in float64) against one share a thread: encode and
# decode 1-4 % faster on 2 threads, 3-5 % on one
SHARE_LOGITS = 1 << 18
INTEGER_PATH_VERSION = "1"  # bump when the derivation changes: it changes the model id

EXP_TABLE = np.rint(
    np.ldexp(
        exp64(-np.arange(EXP_RANGE << LOGIT_BITS, dtype=np.float64) / (1 << LOGIT_BITS)),
        EXP_BITS,
    )
)


@dataclass(frozen=True)
class Policy:
    """Bit widths of the integer prior's weights and GEMM inputs, by layer kind."""

    name: str
    bits: dict  # layer kind -> (weight bits, activation bits)

    def weight_bits(self, kind: str) -> int:
        return self.bits[kind][0]

    def activation_bits(self, kind: str) -> int:
        return self.bits[kind][1]


LAYER_KINDS = (
    "condition.deconv1",
    "condition.deconv2",
    "trunk",
    "spatial",
    "channel",
    "proj",
    "block.conv1",
    "block.conv2",
    "head.conv1",
    "head.conv2",
)
UNIFORM8 = Policy("uniform8", {k: (8, 8) for k in LAYER_KINDS})
# Chu et al. (arXiv 1912.12656): bit width falling with depth, from the inputs to the head
DECREASING = Policy(
    "decreasing",
    {
        "condition.deconv1": (12, 12),
        "condition.deconv2": (8, 8),
        "trunk": (12, 12),
        "spatial": (12, 12),
        "channel": (12, 12),
        "proj": (8, 8),
        "block.conv1": (8, 8),
        "block.conv2": (8, 8),
        "head.conv1": (6, 6),
        "head.conv2": (6, 6),
    },
)
# What measurement asks for instead: the rate is sensitive to the codes coming in and to the
# head's mean and log-scale going out; the layers between take 8 bits, the residual blocks
# 7-bit weights (which kept their GEMMs float32-exact, and once made them one int8 digit each)
PRECISE_ENDS = Policy(
    "precise-ends",
    {
        **{k: (8, 8) for k in LAYER_KINDS},
        "block.conv1": (7, 8),
        "block.conv2": (7, 8),
        "spatial": (14, 15),
        "channel": (14, 15),
        "condition.deconv1": (14, 15),
        "head.conv1": (14, 15),
        "head.conv2": (14, 15),
    },
)
POLICIES = {p.name: p for p in (UNIFORM8, DECREASING, PRECISE_ENDS)}
DEFAULT_POLICY = PRECISE_ENDS


Weights = Mapping[str, np.ndarray]  # a DQModel's state dict as float64 NumPy arrays


@dataclass
class GeluConv:
    """GELU (a table over wide inputs) into int8, then a convolution."""

    table: np.ndarray
    zero: int
    conv: IntConv

    def __call__(self, wide: np.ndarray, at: np.ndarray | None = None) -> np.ndarray:
        return self.conv(apply_table(self.table, wide), self.zero, at)


@dataclass
class IntegerSlice:
    proj: IntConv
    spatial: IntConv
    spatial_bias: np.ndarray  # the anchor pass: no position of the slice is known, bias alone
    channel: IntConv | None
    blocks: list  # (GeluConv to the block's middle, GeluConv back to the stream)
    head: tuple  # (GeluConv to the head's middle, GeluConv to mean / log-scale)
    free: GeluConv | None = None  # a logit per code (logit units), where the prior has them


@dataclass
class IntegerCodePrior:
    """One level's prior at one rate point, in integers; the same passes as CodePrior."""

    groups_per_slice: int
    dim: int
    slice_channels: int
    cond_zero: int
    trunk: IntConv
    features: np.ndarray  # GELU table into the projections' input format
    features_zero: int
    slices: list
    code_values: np.ndarray  # (G, K, d) int8/int16: the codes as the prior's networks read them
    code_units: np.ndarray  # (G, K, d) int64: the codes in the logits' fixed point
    precision: np.ndarray  # (G, d, 513) float64: a 16-bit mantissa times a power of two
    code_bias: np.ndarray  # (G, K) int64 logit units
    code_features: np.ndarray = field(init=False)  # (G, K, 2d) float64 (c^2, c): logits' matmul
    float_code_bias: np.ndarray = field(init=False)  # code_bias in float64

    def __post_init__(self):
        units = self.code_units.astype(np.float64)
        self.code_features = np.concatenate([units * units, units], -1)
        self.float_code_bias = self.code_bias.astype(np.float64)

    @property
    def groups(self) -> int:
        return self.groups_per_slice * len(self.slices)

    def condition(self, cond: np.ndarray) -> np.ndarray:
        """int8 (B, H, W, C) conditioning -> int8 features shared by all passes."""
        return apply_table(self.features, self.trunk(cond, self.cond_zero))

    def slice_inputs(self, s: int, features: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Wide (B, H, W, width): the projection of the features plus the slices before s."""
        sl = self.slices[s]
        shared = sl.proj(features, self.features_zero)
        if sl.channel is not None:
            shared += sl.channel(codes[..., : s * self.slice_channels], 0)
        return shared

    def params(
        self, s: int, shared: np.ndarray, codes: np.ndarray, anchors: bool, positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Mean (code units) and log-scale (1/64 steps), each (B, G_s, n, d), and the free
        logits (B, G_s, n, K) or None, at the n positions (H, W bool) the pass codes, in
        row-major order.

        Large latents go in bands of rows, each with the rows its convolutions reach on
        either side: integer arithmetic makes every band's values exactly the whole map's,
        and the wide intermediate maps never exist at full size."""
        b, h, w = shared.shape[:3]
        reach = self.reach(s, anchors)
        rows = max(1, BAND_ROWS_PER_REACH * reach, BAND_POSITIONS // max(1, b * w))
        if rows >= h:
            return self._params(s, shared, codes, anchors, positions)
        bands = []
        for r in range(0, h, rows):
            r_end = min(h, r + rows)
            top, bottom = max(0, r - reach), min(h, r_end + reach)
            inside = np.zeros_like(positions[top:bottom])
            inside[r - top : r_end - top] = positions[r:r_end]
            bands.append(
                self._params(s, shared[:, top:bottom], codes[:, top:bottom], anchors, inside)
            )
        mean, log_scale, free = zip(*bands)
        return (
            np.concatenate(mean, 2),
            np.concatenate(log_scale, 2),
            None if free[0] is None else np.concatenate(free, 2),
        )

    def reach(self, s: int, anchors: bool) -> int:
        """Rows on either side of a position that its mean and log-scale depend on."""
        sl = self.slices[s]
        convs = [conv.conv for block in sl.blocks for conv in block]
        if not anchors:
            convs.append(sl.spatial)
        return sum(conv.kernel // 2 for conv in convs)

    def _params(
        self, s: int, shared: np.ndarray, codes: np.ndarray, anchors: bool, positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        sl = self.slices[s]
        if anchors:
            h = shared + sl.spatial_bias
        else:
            current = codes[..., s * self.slice_channels : (s + 1) * self.slice_channels]
            h = shared + sl.spatial(current, 0)
        for i, (to_middle, back) in enumerate(sl.blocks):
            if i < len(sl.blocks) - 1:
                h = h + back(to_middle(h))
            else:  # the head reads the last block's output at the pass's positions only
                h = h[:, positions] + back(to_middle(h), positions)
        if not sl.blocks:
            h = h[:, positions]
        to_middle, to_params = sl.head
        out = to_params(to_middle(h[:, :, None]))  # (B, n, 1, G_s * 2 * d)
        b, n = out.shape[:2]
        out = out.reshape(b, n, self.groups_per_slice, 2, self.dim).transpose(0, 2, 1, 3, 4)
        free = None
        if sl.free is not None:
            free = sl.free(h[:, :, None]).reshape(b, n, self.groups_per_slice, -1)
            free = free.transpose(0, 2, 1, 3)
        return out[..., 0, :], out[..., 1, :], free

    def code_logits(
        self,
        groups: slice,
        mean: np.ndarray,
        log_scale: np.ndarray,
        free: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Logits (B, G', n, K) in 2^-LOGIT_BITS nats of the groups `groups` (G' of them) from
        mean and log-scale (B, G', n, d): bias - floor(2^-t sum_d p_d (c_d^2 - 2 m_d c_d))
        (+ free logits), with p_d = floor(precision_d 2^t) and t per position such that the
        largest p_d < 2^23. The dropped sum_d p_d m_d^2 is the same for every code of a
        position.

        Integers carried in float64, where every step is exact: |c| <= 2^12, |m| < 2^15 and
        p < 2^23, so each product has at most 51 significant bits and any partial sum of the
        matmul stays below 2^52 + 2^48 < 2^53, whatever order the GEMM sums in; p 2^-t, a
        power of two apart, holds the same bits, so the matmul's sums come out scaled and
        floor is exact. This runs several times faster than the same arithmetic in int64."""
        rows = np.arange(groups.start * self.dim, groups.stop * self.dim).reshape(
            1, -1, 1, self.dim
        )
        steps = 8 * LOG_SCALE_STEPS + 1
        precision = self.precision.reshape(-1).take(rows * steps + log_scale + 4 * LOG_SCALE_STEPS)
        largest = precision[..., 0]
        for i in range(1, self.dim):  # NumPy reduces over a short last axis slowly
            largest = np.maximum(largest, precision[..., i])
        _, exponent = np.frexp(largest[..., None])
        p = np.floor(np.ldexp(precision, PRECISION_PRODUCT_BITS - exponent))
        np.ldexp(p, exponent - PRECISION_PRODUCT_BITS, out=p)  # p 2^-t
        mean = np.maximum(np.minimum(mean, MEAN_LIMIT), -MEAN_LIMIT)  # np.clip is slower
        features = np.concatenate([p, p * mean * -2.0], -1)  # (B, G', n, 2d)
        logits = np.matmul(features, self.code_features[groups].transpose(0, 2, 1), out=out)
        np.floor(logits, out=logits)  # the quadratic term, then the logits:
        np.subtract(self.float_code_bias[None, groups, None], logits, out=logits)
        return logits if free is None else np.add(logits, free, out=logits)

    def convs(self) -> list[IntConv]:
        """The convolutions that make the mean and log-scale (the free logits' aside)."""
        convs = [self.trunk]
        for sl in self.slices:
            convs += [sl.proj, sl.spatial] + ([sl.channel] if sl.channel is not None else [])
            convs += [step.conv for pair in (*sl.blocks, sl.head) for step in pair]
        return convs

    def lookup(self, indices: np.ndarray, groups: slice) -> np.ndarray:
        """Integer codes (B, H, W, G'*d) of indices (B, G', H, W)."""
        return codes_at(self.code_values[groups], indices)


def codes_at(code_values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Codes (G, K, d) at indices (B, G, H, W), channels last: (B, H, W, G*d)."""
    g = np.arange(code_values.shape[0])[None, :, None, None]
    v = code_values[g, indices]  # (B, G, H, W, d)
    b, groups, h, w, d = v.shape
    return v.transpose(0, 2, 3, 1, 4).reshape(b, h, w, groups * d)


# chooser(pass, group slice, logits (B,G_s,n,K), rows, positions (h,W) bool, table) -> indices
# (B,G_s,n) for the n positions of the pass in rows (positions true, row-major order); logits
# and table are integers in float64: the logits in 2^-LOGIT_BITS nats (as_float_logits makes
# nats of them), the table the range coder's frequencies
Chooser = Callable[[Pass, slice, np.ndarray, slice, np.ndarray, np.ndarray], np.ndarray]


class IntegerPasses:
    """The integer prior's walk over a level's passes: its own integer code map, updated with
    each pass's indices; encoder and decoder both run it, and a chooser picks (or decodes)
    each pass's indices."""

    def __init__(self, prior: IntegerCodePrior, cond: np.ndarray):
        self.prior = prior
        self.features = prior.condition(cond)
        b, h, w, _ = cond.shape
        channels = prior.slice_channels * len(prior.slices)
        self.codes = np.zeros((b, h, w, channels), dtype=prior.code_values.dtype)

    def run(self, choose: Chooser) -> np.ndarray:
        """Indices (B, G, H, W) int64 of every pass, as `choose` gives them."""
        prior = self.prior
        b, h, w, _ = self.codes.shape
        anchors = anchor_mask(h, w)
        indices = np.zeros((b, prior.groups, h, w), dtype=np.int64)
        codebook_size = prior.code_values.shape[1]
        per_row = b * prior.groups_per_slice * w * codebook_size * prior.dim
        blocks = row_blocks(per_row, h)
        for p in pass_schedule(len(prior.slices)):
            s = p.slice_index
            groups = slice(s * prior.groups_per_slice, (s + 1) * prior.groups_per_slice)
            positions = anchors if p.anchors else ~anchors
            if p.anchors:  # the slice's first pass
                self.shared = prior.slice_inputs(s, self.features, self.codes)
            params = self.params(s, p.anchors, positions)
            chosen = np.zeros_like(indices[:, groups])
            for rows in blocks:
                mask = positions[rows]
                logits, table = self.logits(s, params, rows)
                chosen[:, :, rows][:, :, mask] = choose(p, groups, logits, rows, mask, table)
            indices[:, groups] = np.where(positions, chosen, indices[:, groups])
            self.record(s, groups, positions, chosen)
        return indices

    def params(self, s: int, anchors: bool, positions: np.ndarray) -> tuple:
        # where each row's positions start in the pass's row-major list
        starts = np.concatenate([[0], positions.sum(1).cumsum()])
        return (*self.prior.params(s, self.shared, self.codes, anchors, positions), starts)

    def logits(self, s: int, params: tuple, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """Logits and frequency table (B, G_s, n, K) of the pass's positions in `rows`, made
        by workers() threads in shares of the slice's groups: at least one share a thread, and
        shares of at most SHARE_LOGITS logits, whose arrays stay in a core's cache between
        the table's passes over them."""
        mean, log_scale, free, starts = params
        block = slice(int(starts[rows.start]), int(starts[rows.stop]))
        b, groups, n = mean.shape[0], mean.shape[1], block.stop - block.start
        codebook_size = self.prior.code_values.shape[1]
        logits = np.empty((b, groups, n, codebook_size))
        table = np.empty_like(logits)
        first = s * self.prior.groups_per_slice

        def part(share: slice) -> None:
            at = (slice(None), share, block)
            self.prior.code_logits(
                slice(first + share.start, first + share.stop),
                mean[at],
                log_scale[at],
                None if free is None else free[at],
                out=logits[:, share],
            )
            frequency_table(logits[:, share], out=table[:, share])

        per_group = max(1, b * n * codebook_size)
        size = max(1, min(-(-groups // workers()), SHARE_LOGITS // per_group))
        parallel_map(part, [slice(g, min(groups, g + size)) for g in range(0, groups, size)])
        return logits, table

    def record(self, s: int, groups: slice, positions: np.ndarray, chosen: np.ndarray) -> None:
        channels = slice(s * self.prior.slice_channels, (s + 1) * self.prior.slice_channels)
        picked = chosen[:, :, positions, None]  # (B, G_s, n, 1)
        self.codes[:, positions, channels] = self.prior.lookup(picked, groups)[:, :, 0]


def frequency_table(logits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Integer logits (..., K) in float64 -> frequencies (..., K), integers in float64 summing
    to 2^24 - K: with the one constriction adds to every symbol, exactly its 2^24 total.

    weight = exp table(max - logit) <= 2^26 (differences past the table's end take its last
    entry); per row q = floor((2^24 - K) 2^26 / sum), one integer division; frequency =
    floor(weight q 2^-26), a product below 2^50 and so exact in float64."""
    k = logits.shape[-1]
    delta = np.empty(logits.shape, dtype=np.intp)
    np.subtract(np.fmax.reduce(logits, -1, keepdims=True), logits, out=delta, casting="unsafe")
    freqs = EXP_TABLE.take(delta, mode="clip", out=out)  # the weights, then the frequencies
    total = (1 << TOTAL_BITS) - k
    sums = _row_sums(freqs).astype(np.int64)
    freqs *= ((total << EXP_BITS) // sums).astype(np.float64) * 2.0**-EXP_BITS
    np.floor(freqs, out=freqs)
    # what the floors leave (under 2 K) goes to the last code
    freqs[..., -1] += total - _row_sums(freqs)[..., 0]
    return freqs


def _row_sums(x: np.ndarray) -> np.ndarray:
    """Sums over the last axis, (..., 1), of integers in float64 whose sums stay below 2^53:
    exact in any order, so a matrix-vector product (BLAS) gives them, four times as fast as
    NumPy's reduction over a short last axis."""
    return x @ np.ones((x.shape[-1], 1))


def as_float_logits(logits: np.ndarray) -> np.ndarray:
    """What the encoder's rate-aware assignment reads (float32 nats)."""
    return np.multiply(logits, 2.0**-LOGIT_BITS, dtype=np.float32)  # cast, then scale: exact


@dataclass
class IntegerCondition:
    """top_s in integers: the top level's codes -> the bottom prior's int8 conditioning."""

    code_values: np.ndarray  # (G, K, d) int8
    first: IntConv
    second: GeluConv

    def __call__(self, top_indices) -> np.ndarray:
        """int8 (B, H, W, C) of top indices (B, G, h, w), an array or a CPU tensor."""
        x = codes_at(self.code_values, np.asarray(top_indices))
        return self.second(self.first(x, 0)).astype(np.int8)  # in the cond format: 8 bits


@dataclass
class IntegerModel:
    """Everything that makes probabilities, for one rate point of one model."""

    top: IntegerCodePrior
    bottom: IntegerCodePrior
    condition: IntegerCondition

    @property
    def weight_bits(self) -> int:
        """The integer weights' size at the policy's widths, packed."""
        condition = [self.condition.first, self.condition.second.conv]
        convs = self.top.convs() + self.bottom.convs() + condition
        return sum(conv.weight.size * conv.bits for conv in convs)

    def top_input(self, height: int, width: int) -> np.ndarray:
        return np.ones((1, height, width, 1), dtype=np.int8)


# -- derivation ----------------------------------------------------------------------------------


def _full(n: int, value: float) -> np.ndarray:
    return np.full(n, value, dtype=np.float64)


def _code_formats(codebooks: np.ndarray, bits: int) -> tuple[Format, np.ndarray, np.ndarray]:
    """The codes as network input: their integer format, the step of each channel (g, d),
    and their unit (G, d) in the logits' fixed point."""
    largest = np.maximum(np.abs(codebooks).max(1), 1e-12)  # (G, d)
    top = (1 << (bits - 1)) - 1
    return Format(1.0, 0, -top, top), (largest / top).reshape(-1), largest / (1 << CODE_BITS)


def _code_values(codebooks: np.ndarray, step: np.ndarray, codes: Format) -> np.ndarray:
    g, k, d = codebooks.shape
    q = np.clip(np.rint(codebooks / step.reshape(g, 1, d)), codes.low, codes.high)
    return q.astype(np.int8 if codes.high <= 127 else np.int16)


def _precision_table(unit: np.ndarray) -> np.ndarray:
    """0.5 exp(-2 l) unit^2 in logit units per squared code unit, rounded to a 16-bit
    mantissa times a power of two (so its products with squared distances are exact)."""
    steps = (
        np.arange(-4 * LOG_SCALE_STEPS, 4 * LOG_SCALE_STEPS + 1, dtype=np.float64) / LOG_SCALE_STEPS
    )
    value = 0.5 * exp64(-2.0 * steps)[None, None, :] * (unit * unit)[:, :, None] * (1 << LOGIT_BITS)
    frac, exponent = np.frexp(value)  # value = frac * 2^exponent, frac in [0.5, 1)
    shift = PRECISION_BITS - exponent
    if (shift < 0).any():
        raise ValueError("codebook too coarse for the integer prior's precision table")
    mantissa = np.rint(np.ldexp(frac, PRECISION_BITS))
    # below 2^-62 per unit^2 a precision gives 0 for every reachable distance
    mantissa[shift > 62] = 0
    return np.ldexp(mantissa, -np.minimum(shift, 62))


class _Layers:
    """The float64 weights under one prefix of the state dict: layers by name."""

    def __init__(self, weights: Weights, prefix: str):
        self.weights, self.prefix = weights, prefix

    def __contains__(self, name: str) -> bool:
        return f"{self.prefix}{name}" in self.weights

    def __getitem__(self, name: str) -> np.ndarray:
        return self.weights[f"{self.prefix}{name}"]

    def conv(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return self[f"{name}.weight"], self[f"{name}.bias"]


def _gelu_conv(
    conv: tuple[np.ndarray, np.ndarray],
    source: Format,
    act_max: float,
    kind: str,
    policy: Policy,
    out_scale: np.ndarray,
    out: Format,
    limits: tuple | None = None,
) -> GeluConv:
    act = Format.after_gelu(act_max, policy.activation_bits(kind))
    return GeluConv(
        gelu_table(source, act),
        act.zero,
        int_conv(*conv, act, None, out_scale, out, policy.weight_bits(kind), limits=limits),
    )


def _gelu_pair(
    layers: _Layers,
    name: str,
    key: str,
    kind: str,
    source: Format,
    ranges: dict,
    policy: Policy,
    out_scale: np.ndarray,
    out: Format,
    limits: tuple | None = None,
) -> tuple[GeluConv, GeluConv]:
    """A residual block's or the head's two GELU convolutions, `name`1 then `name`3, through
    the wide format of ranges[key.mid] between them."""
    middle = Format.wide(ranges[f"{key}.mid"])
    width = layers[name + "1.weight"].shape[0]
    return (
        _gelu_conv(
            layers.conv(name + "1"),
            source,
            ranges[f"{key}.act1"],
            f"{kind}.conv1",
            policy,
            _full(width, middle.scale),
            middle,
        ),
        _gelu_conv(
            layers.conv(name + "3"),
            middle,
            ranges[f"{key}.act2"],
            f"{kind}.conv2",
            policy,
            out_scale,
            out,
            limits=limits,
        ),
    )


def _derive_slice(
    layers: _Layers,
    s: int,
    slice_channels: int,
    groups: slice,
    features: Format,
    codes: Format,
    code_step: np.ndarray,
    code_unit: np.ndarray,
    embedding: np.ndarray | None,
    ranges: dict,
    policy: Policy,
) -> IntegerSlice:
    context = f"contexts.{s}."
    h = Format.wide(ranges[f"h{s}"])
    spatial_weight, spatial_bias = layers.conv(context + "spatial")
    width = spatial_weight.shape[0]
    to_h = _full(width, h.scale)
    proj = int_conv(
        *layers.conv(f"cond_proj.{s}"),
        features,
        None,
        to_h,
        h,
        policy.weight_bits("proj"),
        extra_input=embedding,
    )
    current = slice(s * slice_channels, (s + 1) * slice_channels)
    spatial = int_conv(
        spatial_weight,
        spatial_bias,
        codes,
        code_step[current],
        to_h,
        h,
        policy.weight_bits("spatial"),
    )
    channel = None
    if context + "channel.weight" in layers:
        channel = int_conv(
            *layers.conv(context + "channel"),
            codes,
            code_step[: s * slice_channels],
            to_h,
            h,
            policy.weight_bits("channel"),
        )
    blocks = []
    while f"{context}blocks.{len(blocks)}.1.weight" in layers:
        b = len(blocks)
        block = f"{context}blocks.{b}."
        blocks.append(_gelu_pair(layers, block, f"s{s}.b{b}", "block", h, ranges, policy, to_h, h))
    # head outputs (G_s, 2, d): means in code units, log-scales in 1/64 steps
    units = code_unit[groups]
    out_scale = np.stack([units, np.full_like(units, 1.0 / LOG_SCALE_STEPS)], 1).reshape(-1)
    # means within the wide range, log-scales within the float prior's clamp [-4, 4]
    limit = np.stack(
        [np.full_like(units, WIDE_MAX), np.full_like(units, 4 * LOG_SCALE_STEPS)], 1
    ).reshape(-1)
    params = Format(1.0, 0, -WIDE_MAX, WIDE_MAX)
    head = _gelu_pair(
        layers,
        context + "head.",
        f"s{s}.head",
        "head",
        h,
        ranges,
        policy,
        out_scale,
        params,
        limits=(-limit, limit),
    )
    free = None
    if context + "free.1.weight" in layers:  # logits up to 2^30 units: far beyond any that matters
        free_weight, free_bias = layers.conv(context + "free.1")
        free = _gelu_conv(
            (free_weight, free_bias),
            h,
            ranges[f"s{s}.free.act"],
            "head.conv2",
            policy,
            _full(free_weight.shape[0], 2.0**-LOGIT_BITS),
            Format(1.0, 0, -(1 << 30), 1 << 30),
        )
    anchor_bias = np.rint(spatial_bias / h.scale).astype(np.int64)
    return IntegerSlice(proj, spatial, anchor_bias, channel, blocks, head, free)


def _derive_prior(
    layers: _Layers,
    level: LevelConfig,
    point: int,
    cond: Format,
    ranges: dict,
    policy: Policy,
) -> IntegerCodePrior:
    groups_per_slice, dim = level.groups // level.slices, level.group_dim
    slice_channels = level.channels // level.slices
    codebooks = layers["quantizer.codebooks"]
    code_bias = layers["prior.code_bias"]
    code_bias = code_bias[point] if code_bias.ndim == 3 else code_bias
    prior = _Layers(layers.weights, layers.prefix + "prior.")
    embedding = prior["point_embedding"][point] if "point_embedding" in prior else None
    codes, code_step, code_unit = _code_formats(codebooks, policy.activation_bits("spatial"))
    trunk_out = Format.wide(ranges["trunk"])
    trunk_weight, trunk_bias = prior.conv("cond_trunk.0")
    trunk = int_conv(
        trunk_weight,
        trunk_bias,
        cond,
        None,
        _full(trunk_weight.shape[0], trunk_out.scale),
        trunk_out,
        policy.weight_bits("trunk"),
    )
    features = Format.after_gelu(ranges["features"], policy.activation_bits("proj"))
    slices = [
        _derive_slice(
            prior,
            s,
            slice_channels,
            slice(s * groups_per_slice, (s + 1) * groups_per_slice),
            features,
            codes,
            code_step,
            code_unit,
            embedding,
            ranges,
            policy,
        )
        for s in range(level.slices)
    ]
    return IntegerCodePrior(
        groups_per_slice,
        dim,
        slice_channels,
        cond.zero,
        trunk,
        gelu_table(trunk_out, features),
        features.zero,
        slices,
        _code_values(codebooks, code_step, codes),
        np.rint(codebooks / code_unit[:, None, :]).astype(np.int64),
        _precision_table(code_unit),
        np.rint(code_bias * (1 << LOGIT_BITS)).astype(np.int64),
    )


def derive(
    weights: Weights,
    config: ModelConfig,
    point: int,
    calibration: dict,
    policy: Policy = DEFAULT_POLICY,
) -> IntegerModel:
    """The integer prior of one rate point (0 for a single-rate model) of the model whose
    state dict `weights` holds (float64 arrays, see `Float64Weights`)."""
    ranges = calibration["points"][str(point)]
    priors = {}
    for level in ("top", "bottom"):
        cond = (
            Format(1.0, 0, 1, 1) if level == "top" else Format.symmetric(ranges["bottom"]["cond"])
        )
        priors[level] = _derive_prior(
            _Layers(weights, f"{level}."),
            getattr(config, level),
            point,
            cond,
            ranges[level],
            policy,
        )
    # top_s reads the top codes divided by the point's gain
    top_codebooks = weights["top.quantizer.codebooks"]
    codes, step, _ = _code_formats(top_codebooks, policy.activation_bits("condition.deconv1"))
    in_scale = step
    if config.rate_points > 1:
        in_scale = step / exp64(weights["top_gain"][point])
    mid = Format.wide(ranges["condition"]["mid"])
    first_weight, first_bias = weights["top_s.0.weight"], weights["top_s.0.bias"]
    first = int_conv(
        first_weight,
        first_bias,
        codes,
        in_scale,
        _full(first_weight.shape[1], mid.scale),
        mid,
        policy.weight_bits("condition.deconv1"),
        transposed=True,
    )
    cond = Format.symmetric(ranges["bottom"]["cond"])
    act = Format.after_gelu(ranges["condition"]["act"], policy.activation_bits("condition.deconv2"))
    second_weight, second_bias = weights["top_s.2.weight"], weights["top_s.2.bias"]
    second = GeluConv(
        gelu_table(mid, act),
        act.zero,
        int_conv(
            second_weight,
            second_bias,
            act,
            None,
            _full(second_weight.shape[1], cond.scale),
            cond,
            policy.weight_bits("condition.deconv2"),
            transposed=True,
        ),
    )
    condition = IntegerCondition(_code_values(top_codebooks, step, codes), first, second)
    return IntegerModel(priors["top"], priors["bottom"], condition)


class Float64Weights(Mapping):
    """A state dict (tensors or arrays) as float64 NumPy arrays, each converted when `derive`
    reads it (it reads only the priors, top_s, the codebooks and the gains)."""

    def __init__(self, state: Mapping):
        self.state = state

    def __getitem__(self, name: str) -> np.ndarray:
        return np.asarray(self.state[name], dtype=np.float64)

    def __iter__(self):
        return iter(self.state)

    def __len__(self) -> int:
        return len(self.state)


def integer_id(float_id: bytes, calibration: dict, policy: Policy) -> bytes:
    """8 bytes naming the integer prior: the float weights, the calibration, the policy and
    the derivation's version (files name this id, so any change is refused, never misread)."""
    digest = hashlib.sha256(float_id)
    digest.update(json.dumps(calibration, sort_keys=True).encode())
    digest.update(json.dumps([policy.name, sorted(policy.bits.items())]).encode())
    digest.update(INTEGER_PATH_VERSION.encode())
    return digest.digest()[:8]
