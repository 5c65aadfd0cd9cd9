"""The prior in integer arithmetic: what makes every probability the range coder sees, so a
file decodes bit for bit on any CPU, thread count, BLAS or GPU.

An `IntegerModel` is derived from a float `DQModel`, one rate point at a time, by
`derive(model, point, calibration, policy)`: weights become per-channel integers at the
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from dqcodec.entropy_models.prior import CodePrior
from dqcodec.layers.fixed_point import (
    WIDE_MAX,
    Format,
    IntConv,
    apply_table,
    exp64,
    gelu_table,
    int_conv,
    lookup,
)

if TYPE_CHECKING:
    from dqcodec.models.dq import DQModel

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
INTEGER_PATH_VERSION = "1"  # bump when the derivation changes: it changes the model id

EXP_TABLE = torch.from_numpy(
    np.rint(
        np.ldexp(
            exp64(-np.arange(EXP_RANGE << LOGIT_BITS, dtype=np.float64) / (1 << LOGIT_BITS)),
            EXP_BITS,
        )
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
# 7-bit weights (one int8 digit each, see fixed_point.weight_digits: half the GEMMs)
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


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


@dataclass
class GeluConv:
    """GELU (a table over wide inputs) into int8, then a convolution."""

    table: Tensor
    zero: int
    conv: IntConv

    def __call__(self, wide: Tensor, at: Tensor | None = None) -> Tensor:
        return self.conv(apply_table(self.table, wide), self.zero, at)


def _gelu_conv(
    conv: torch.nn.Conv2d,
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
        int_conv(
            _np(conv.weight),
            _np(conv.bias),
            act,
            None,
            out_scale,
            out,
            policy.weight_bits(kind),
            limits=limits,
        ),
    )


def _full(n: int, value: float) -> np.ndarray:
    return np.full(n, value, dtype=np.float64)


@dataclass
class IntegerSlice:
    proj: IntConv
    spatial: IntConv
    spatial_bias: Tensor  # the anchor pass: no position of the slice is known, bias alone
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
    features: Tensor  # GELU table into the projections' input format
    features_zero: int
    slices: list
    code_values: Tensor  # (G, K, d) int8/int16: the codes as the prior's networks read them
    code_units: Tensor  # (G, K, d) int64: the codes in the logits' fixed point
    precision: Tensor  # (G, d, 513) float64: a 16-bit mantissa times a power of two
    code_bias: Tensor  # (G, K) int64 logit units
    code_features: Tensor = field(init=False)  # (G, K, 2d) float64: (c^2, c), the logits' matmul

    def __post_init__(self):
        units = self.code_units.double()
        self.code_features = torch.cat([units.square(), units], -1)

    def condition(self, cond: Tensor) -> Tensor:
        """int8 (B, H, W, C) conditioning -> int8 features shared by all passes."""
        return apply_table(self.features, self.trunk(cond, self.cond_zero))

    def slice_inputs(self, s: int, features: Tensor, codes: Tensor) -> Tensor:
        """Wide (B, H, W, width): the projection of the features plus the slices before s."""
        sl = self.slices[s]
        shared = sl.proj(features, self.features_zero)
        if sl.channel is not None:
            shared += sl.channel(codes[..., : s * self.slice_channels], 0)
        return shared

    def params(
        self, s: int, shared: Tensor, codes: Tensor, anchors: bool, positions: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Mean (code units) and log-scale (1/64 steps), each (B, G_s, n, d) int64, and the
        free logits (B, G_s, n, K) or None, at the n positions (H, W bool) the pass codes, in
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
            inside = torch.zeros_like(positions[top:bottom])
            inside[r - top : r_end - top] = positions[r:r_end]
            bands.append(
                self._params(s, shared[:, top:bottom], codes[:, top:bottom], anchors, inside)
            )
        mean, log_scale, free = zip(*bands)
        return (
            torch.cat(mean, 2),
            torch.cat(log_scale, 2),
            None if free[0] is None else torch.cat(free, 2),
        )

    def reach(self, s: int, anchors: bool) -> int:
        """Rows on either side of a position that its mean and log-scale depend on."""
        sl = self.slices[s]
        convs = [conv.conv for block in sl.blocks for conv in block]
        if not anchors:
            convs.append(sl.spatial)
        return sum(conv.kernel // 2 for conv in convs)

    def _params(
        self, s: int, shared: Tensor, codes: Tensor, anchors: bool, positions: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
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
        out = out.reshape(b, n, self.groups_per_slice, 2, self.dim).permute(0, 2, 1, 3, 4)
        free = None
        if sl.free is not None:
            free = (
                sl.free(h[:, :, None]).reshape(b, n, self.groups_per_slice, -1).permute(0, 2, 1, 3)
            )
        return out[..., 0, :], out[..., 1, :], free

    def code_logits(
        self, s: int, mean: Tensor, log_scale: Tensor, free: Tensor | None = None
    ) -> Tensor:
        """Logits (B, G_s, n, K) in 2^-LOGIT_BITS nats from mean and log-scale (B, G_s, n, d):
        bias - floor(2^-t sum_d p_d (c_d^2 - 2 m_d c_d)) (+ free logits), with p_d =
        floor(precision_d 2^t) and t per position such that the largest p_d < 2^23. The
        dropped sum_d p_d m_d^2 is the same for every code of a position.

        Integers carried in float64, where every step is exact: |c| <= 2^12, |m| < 2^15 and
        p < 2^23, so each product has at most 51 significant bits and any partial sum of the
        matmul stays below 2^52 + 2^48 < 2^53, whatever order the GEMM sums in; scaling by 2^-t
        and floor are exact. This runs several times faster than the same arithmetic in int64."""
        groups = slice(s * self.groups_per_slice, (s + 1) * self.groups_per_slice)
        rows = torch.arange(groups.start * self.dim, groups.stop * self.dim).reshape(
            1, -1, 1, self.dim
        )
        steps = 8 * LOG_SCALE_STEPS + 1
        precision = lookup(
            self.precision.reshape(-1), rows * steps + log_scale + 4 * LOG_SCALE_STEPS
        )
        _, exponent = torch.frexp(precision.amax(-1, keepdim=True))
        shift = (PRECISION_PRODUCT_BITS - exponent).double()
        p = torch.ldexp(precision, shift).floor_()
        mean = mean.clamp(-MEAN_LIMIT, MEAN_LIMIT).double()
        features = torch.cat([p, p * mean * -2.0], -1)  # (B, G_s, n, 2d)
        quadratic = torch.matmul(
            features, self.code_features[groups].transpose(1, 2)
        )  # (B, G_s, n, K)
        quadratic = torch.ldexp(quadratic, -shift).floor_()
        logits = self.code_bias[groups].double()[None, :, None] - quadratic
        return logits if free is None else logits.add_(free.double())

    def lookup(self, indices: Tensor, groups: slice) -> Tensor:
        """Integer codes (B, H, W, G'*d) of indices (B, G', H, W)."""
        return codes_at(self.code_values[groups], indices)


def codes_at(code_values: Tensor, indices: Tensor) -> Tensor:
    """Codes (G, K, d) at indices (B, G, H, W), channels last: (B, H, W, G*d)."""
    g = torch.arange(code_values.shape[0])[None, :, None, None]
    v = code_values[g, indices]  # (B, G, H, W, d)
    b, groups, h, w, d = v.shape
    return v.permute(0, 2, 3, 1, 4).reshape(b, h, w, groups * d)


class IntegerPasses:
    """The integer prior's side of DQLatentCodec's pass walk: its own int8 code map,
    updated with each pass's indices."""

    def __init__(self, prior: IntegerCodePrior, cond: Tensor, channels: int):
        self.prior = prior
        self.features = prior.condition(cond)
        b, h, w, _ = cond.shape
        self.codes = torch.zeros(b, h, w, channels, dtype=prior.code_values.dtype)

    def begin_slice(self, s: int, y_hat: Tensor) -> None:
        self.shared = self.prior.slice_inputs(s, self.features, self.codes)

    def params(self, s: int, y_hat: Tensor, anchors: bool, positions: Tensor) -> tuple:
        # where each row's positions start in the pass's row-major list
        starts = torch.cat([positions.new_zeros(1, dtype=torch.long), positions.sum(1).cumsum(0)])
        return (*self.prior.params(s, self.shared, self.codes, anchors, positions), starts)

    def logits(self, s: int, params: tuple, rows: slice, mask: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_scale, free, starts = params
        block = slice(int(starts[rows.start]), int(starts[rows.stop]))
        logits = self.prior.code_logits(
            s,
            mean[:, :, block],
            log_scale[:, :, block],
            None if free is None else free[:, :, block],
        )
        return logits, frequency_table(logits)

    def record(self, s: int, groups: slice, positions: Tensor, chosen: Tensor) -> None:
        channels = slice(s * self.prior.slice_channels, (s + 1) * self.prior.slice_channels)
        self.codes[..., channels] = torch.where(
            positions[..., None], self.prior.lookup(chosen, groups), self.codes[..., channels]
        )


def frequency_table(logits: Tensor) -> Tensor:
    """Integer logits (..., K) in float64 -> frequencies (..., K), integers in float64 summing
    to 2^24 - K: with the one constriction adds to every symbol, exactly its 2^24 total.

    weight = exp table(max - logit) <= 2^26; per row q = floor((2^24 - K) 2^26 / sum), one
    integer division; frequency = floor(weight q 2^-26), a product below 2^50 and so exact in
    float64."""
    k = logits.shape[-1]
    delta = (logits.amax(-1, keepdim=True) - logits).clamp_(max=EXP_TABLE.numel() - 1)
    weights = lookup(EXP_TABLE, delta)
    total = (1 << TOTAL_BITS) - k
    sums = weights.sum(-1, keepdim=True).to(torch.int64)
    scale = torch.div(total << EXP_BITS, sums, rounding_mode="floor").double().mul_(2.0**-EXP_BITS)
    freqs = weights.mul_(scale).floor_()
    freqs[..., -1] += total - freqs.sum(
        -1
    )  # what the floors leave (under 2 K) goes to the last code
    return freqs


def as_float_logits(logits: Tensor) -> Tensor:
    """What the encoder's rate-aware assignment reads (float32 nats)."""
    return logits.float() / (1 << LOGIT_BITS)


@dataclass
class IntegerCondition:
    """top_s in integers: the top level's codes -> the bottom prior's int8 conditioning."""

    code_values: Tensor  # (G, K, d) int8
    first: IntConv
    second: GeluConv

    def __call__(self, top_indices: Tensor) -> Tensor:
        x = codes_at(self.code_values, top_indices)
        return self.second(self.first(x, 0)).to(torch.int8)  # in the cond format: 8 bits


@dataclass
class IntegerModel:
    """Everything that makes probabilities, for one rate point of one model."""

    top: IntegerCodePrior
    bottom: IntegerCodePrior
    condition: IntegerCondition
    weight_bits: int = 0  # the integer weights' size at the policy's widths, packed

    def top_input(self, height: int, width: int) -> Tensor:
        return torch.ones(1, height, width, 1, dtype=torch.int8)


# -- derivation ----------------------------------------------------------------------------------


def _code_formats(codebooks: np.ndarray, bits: int) -> tuple[Format, np.ndarray, np.ndarray]:
    """The codes as network input: their integer format, the step of each channel (g, d),
    and their unit (G, d) in the logits' fixed point."""
    largest = np.maximum(np.abs(codebooks).max(1), 1e-12)  # (G, d)
    top = (1 << (bits - 1)) - 1
    return Format(1.0, 0, -top, top), (largest / top).reshape(-1), largest / (1 << CODE_BITS)


def _code_values(codebooks: np.ndarray, step: np.ndarray, codes: Format) -> Tensor:
    g, k, d = codebooks.shape
    q = np.clip(np.rint(codebooks / step.reshape(g, 1, d)), codes.low, codes.high)
    return torch.from_numpy(q.astype(np.int8 if codes.high <= 127 else np.int16))


def _precision_table(unit: np.ndarray) -> Tensor:
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
    return torch.from_numpy(np.ldexp(mantissa, -np.minimum(shift, 62)))


def _derive_prior(
    prior: CodePrior,
    codebooks: np.ndarray,
    code_bias: np.ndarray,
    embedding: np.ndarray | None,
    cond: Format,
    ranges: dict,
    policy: Policy,
) -> IntegerCodePrior:
    groups_per_slice, dim, slice_channels = prior.groups_per_slice, prior.dim, prior.slice_channels
    codes, code_step, code_unit = _code_formats(codebooks, policy.activation_bits("spatial"))
    trunk_out = Format.wide(ranges["trunk"])
    trunk = int_conv(
        _np(prior.cond_trunk[0].weight),
        _np(prior.cond_trunk[0].bias),
        cond,
        None,
        _full(prior.cond_trunk[0].out_channels, trunk_out.scale),
        trunk_out,
        policy.weight_bits("trunk"),
    )
    features = Format.after_gelu(ranges["features"], policy.activation_bits("proj"))
    slices = []
    for s, context in enumerate(prior.contexts):
        h = Format.wide(ranges[f"h{s}"])
        width = context.spatial.out_channels
        to_h = _full(width, h.scale)
        proj = int_conv(
            _np(prior.cond_proj[s].weight),
            _np(prior.cond_proj[s].bias),
            features,
            None,
            to_h,
            h,
            policy.weight_bits("proj"),
            extra_input=embedding,
        )
        current = slice(s * slice_channels, (s + 1) * slice_channels)
        spatial = int_conv(
            _np(context.spatial.weight),
            _np(context.spatial.bias),
            codes,
            code_step[current],
            to_h,
            h,
            policy.weight_bits("spatial"),
        )
        spatial_bias = torch.from_numpy(
            np.rint(_np(context.spatial.bias) / h.scale).astype(np.int64)
        )
        channel = None
        if context.channel is not None:
            channel = int_conv(
                _np(context.channel.weight),
                _np(context.channel.bias),
                codes,
                code_step[: s * slice_channels],
                to_h,
                h,
                policy.weight_bits("channel"),
            )
        blocks = []
        for b, block in enumerate(context.blocks):
            middle = Format.wide(ranges[f"s{s}.b{b}.mid"])
            blocks.append(
                (
                    _gelu_conv(
                        block[1],
                        h,
                        ranges[f"s{s}.b{b}.act1"],
                        "block.conv1",
                        policy,
                        _full(width, middle.scale),
                        middle,
                    ),
                    _gelu_conv(
                        block[3], middle, ranges[f"s{s}.b{b}.act2"], "block.conv2", policy, to_h, h
                    ),
                )
            )
        head_mid = Format.wide(ranges[f"s{s}.head.mid"])
        groups = slice(s * groups_per_slice, (s + 1) * groups_per_slice)
        # head outputs (G_s, 2, d): means in code units, log-scales in 1/64 steps
        units = code_unit[groups]
        out_scale = np.stack([units, np.full_like(units, 1.0 / LOG_SCALE_STEPS)], 1).reshape(-1)
        # means within the wide range, log-scales within the float prior's clamp [-4, 4]
        limit = np.stack(
            [np.full_like(units, WIDE_MAX), np.full_like(units, 4 * LOG_SCALE_STEPS)], 1
        ).reshape(-1)
        to_params = _gelu_conv(
            context.head[3],
            head_mid,
            ranges[f"s{s}.head.act2"],
            "head.conv2",
            policy,
            out_scale,
            Format(1.0, 0, -WIDE_MAX, WIDE_MAX),
            limits=(-limit, limit),
        )
        head = (
            _gelu_conv(
                context.head[1],
                h,
                ranges[f"s{s}.head.act1"],
                "head.conv1",
                policy,
                _full(width, head_mid.scale),
                head_mid,
            ),
            to_params,
        )
        free = None
        if context.free is not None:  # logits up to 2^30 units: far beyond any that matters
            free = _gelu_conv(
                context.free[1],
                h,
                ranges[f"s{s}.free.act"],
                "head.conv2",
                policy,
                _full(context.free[1].out_channels, 2.0**-LOGIT_BITS),
                Format(1.0, 0, -(1 << 30), 1 << 30),
            )
        slices.append(IntegerSlice(proj, spatial, spatial_bias, channel, blocks, head, free))
    precision = _precision_table(code_unit)
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
        torch.from_numpy(np.rint(codebooks / code_unit[:, None, :]).astype(np.int64)),
        precision,
        torch.from_numpy(np.rint(code_bias * (1 << LOGIT_BITS)).astype(np.int64)),
    )


def derive(
    model: DQModel, point: int, calibration: dict, policy: Policy = DEFAULT_POLICY
) -> IntegerModel:
    """The integer prior of one rate point (0 for a single-rate model)."""
    ranges = calibration["points"][str(point)]
    variable = model.config.rate_points > 1
    gains = {}
    for level in ("top", "bottom"):
        gains[level] = exp64(_np(getattr(model, f"{level}_gain")[point])) if variable else None
    priors = {}
    for level in ("top", "bottom"):
        codec = getattr(model, level)
        bias = _np(codec.prior.code_bias)
        bias = bias[point] if bias.ndim == 3 else bias
        embedding = (
            _np(codec.prior.point_embedding[point])
            if codec.prior.point_embedding is not None
            else None
        )
        cond = (
            Format(1.0, 0, 1, 1) if level == "top" else Format.symmetric(ranges["bottom"]["cond"])
        )
        priors[level] = _derive_prior(
            codec.prior,
            _np(codec.quantizer.codebooks),
            bias,
            embedding,
            cond,
            ranges[level],
            policy,
        )
    # top_s reads the top codes divided by the point's gain
    top_codebooks = _np(model.top.quantizer.codebooks)
    codes, step, _ = _code_formats(top_codebooks, policy.activation_bits("condition.deconv1"))
    in_scale = step if gains["top"] is None else step / gains["top"]
    mid = Format.wide(ranges["condition"]["mid"])
    first_layer, _, second_layer = model.top_s
    first = int_conv(
        _np(first_layer.weight),
        _np(first_layer.bias),
        codes,
        in_scale,
        _full(first_layer.out_channels, mid.scale),
        mid,
        policy.weight_bits("condition.deconv1"),
        transposed=True,
    )
    cond = Format.symmetric(ranges["bottom"]["cond"])
    act = Format.after_gelu(ranges["condition"]["act"], policy.activation_bits("condition.deconv2"))
    second = GeluConv(
        gelu_table(mid, act),
        act.zero,
        int_conv(
            _np(second_layer.weight),
            _np(second_layer.bias),
            act,
            None,
            _full(second_layer.out_channels, cond.scale),
            cond,
            policy.weight_bits("condition.deconv2"),
            transposed=True,
        ),
    )
    condition = IntegerCondition(_code_values(top_codebooks, step, codes), first, second)
    return IntegerModel(priors["top"], priors["bottom"], condition, _weight_bits(model, policy))


def _weight_bits(model: DQModel, policy: Policy) -> int:
    """Bits of the integer path's convolution weights at the policy's widths (packed)."""
    total = 0
    for level in (model.top, model.bottom):
        p = level.prior
        kinds = [(p.cond_trunk[0], "trunk")] + [(c, "proj") for c in p.cond_proj]
        for ctx in p.contexts:
            kinds += [
                (ctx.spatial, "spatial"),
                (ctx.head[1], "head.conv1"),
                (ctx.head[3], "head.conv2"),
            ]
            kinds += [(ctx.channel, "channel")] if ctx.channel is not None else []
            for block in ctx.blocks:
                kinds += [(block[1], "block.conv1"), (block[3], "block.conv2")]
        total += sum(conv.weight.numel() * policy.weight_bits(kind) for conv, kind in kinds)
    total += model.top_s[0].weight.numel() * policy.weight_bits("condition.deconv1")
    total += model.top_s[2].weight.numel() * policy.weight_bits("condition.deconv2")
    return total


def integer_id(float_id: bytes, calibration: dict, policy: Policy) -> bytes:
    """8 bytes naming the integer prior: the float weights, the calibration, the policy and
    the derivation's version (files name this id, so any change is refused, never misread)."""
    digest = hashlib.sha256(float_id)
    digest.update(json.dumps(calibration, sort_keys=True).encode())
    digest.update(json.dumps([policy.name, sorted(policy.bits.items())]).encode())
    digest.update(INTEGER_PATH_VERSION.encode())
    return digest.digest()[:8]
