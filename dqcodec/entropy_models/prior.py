"""Autoregressive prior over code indices, run as a fixed schedule of parallel passes.

Its passes are scheduled in passes.py. The prior for a pass sees the conditioning features
(the level above), every slice already decoded, and the anchors of the current slice.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dqcodec.entropy_models.passes import anchor_mask


def checkerboard(height: int, width: int, device=None) -> Tensor:
    """Boolean (H, W) mask of anchor positions: (i + j) even."""
    return torch.from_numpy(anchor_mask(height, width)).to(device)


def code_bits(logits: Tensor, indices: Tensor) -> Tensor:
    """Information content in bits of each index under its categorical."""
    nats = -F.log_softmax(logits, dim=-1).gather(-1, indices.unsqueeze(-1)).squeeze(-1)
    return nats / math.log(2.0)


class ResidualBlock(nn.Sequential):
    def __init__(self, width: int):
        super().__init__(
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + super().forward(x)


class SliceContext(nn.Module):
    """Predicts, per group of one slice, a mean and scale in code space.

    Every input is known to the decoder at every position when the pass runs (positions
    not decoded yet are zero), so the layers may mix neighbouring positions freely."""

    def __init__(
        self,
        cond_width: int,
        prev_channels: int,
        slice_channels: int,
        width: int,
        out: int,
        kernel: int = 1,
        blocks: int = 0,
        free_logits: int = 0,
    ):
        super().__init__()
        self.spatial = nn.Conv2d(slice_channels, width, 5, padding=2)
        self.channel = (
            nn.Conv2d(prev_channels, width, kernel, padding=kernel // 2) if prev_channels else None
        )
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)))
        self.head = nn.Sequential(
            nn.GELU(), nn.Conv2d(width, width, 1), nn.GELU(), nn.Conv2d(width, out, 1)
        )
        self.free = (
            nn.Sequential(nn.GELU(), nn.Conv2d(width, free_logits, 1)) if free_logits else None
        )

    def shared(
        self, cond_features: Tensor, previous: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """What both passes of the slice see alike: the conditioning and the slices before."""
        return cond_features, self.channel(previous) if self.channel is not None else None

    def forward(
        self, shared: tuple[Tensor, Tensor | None], current: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """The bump's parameters and, with free logits, a logit per code of each group;
        current is None in the anchor pass, where no position of the slice is decoded yet
        and the spatial convolution of its zeros is its bias alone."""
        cond_features, channel = shared
        if current is None:
            h = cond_features + self.spatial.bias[:, None, None]
        else:
            h = cond_features + self.spatial(current)
        if channel is not None:
            h = h + channel
        h = self.blocks(h)
        return self.head(h), self.free(h) if self.free is not None else None


class CodePrior(nn.Module):
    """Categorical over each group's K codes: a Gaussian bump around a predicted point
    of code space plus a learned per-code bias. Tying the distribution to the codebook
    geometry lets it learn as fast as a Gaussian conditional."""

    def __init__(
        self,
        cond_channels: int,
        channels: int,
        groups: int,
        codebook_size: int,
        slices: int,
        width: int,
        rate_points: int = 1,
        kernel: int = 1,
        blocks: int = 0,
        free_logits: bool = False,
    ):
        super().__init__()
        self.groups_per_slice = groups // slices
        self.dim = channels // groups
        slice_channels = channels // slices
        self.cond_trunk = nn.Sequential(nn.Conv2d(cond_channels, width, 3, padding=1), nn.GELU())
        self.cond_proj = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(slices))
        self.contexts = nn.ModuleList(
            SliceContext(
                width,
                s * slice_channels,
                slice_channels,
                width,
                2 * self.groups_per_slice * self.dim,
                kernel,
                blocks,
                self.groups_per_slice * codebook_size if free_logits else 0,
            )
            for s in range(slices)
        )
        # a variable-rate model has a bias per rate point: how peaked each group's marginal
        # is depends on how coarsely the point quantizes
        bias_shape = (
            (rate_points, groups, codebook_size) if rate_points > 1 else (groups, codebook_size)
        )
        self.code_bias = nn.Parameter(torch.zeros(bias_shape))
        self.slice_channels = slice_channels
        # a variable-rate model tells the prior which rate point each sample is coded at
        self.point_embedding = (
            nn.Parameter(torch.zeros(rate_points, width)) if rate_points > 1 else None
        )

    def condition(self, cond: Tensor, point: Tensor) -> Tensor:
        """Features of the conditioning input, shared by all passes of a level."""
        features = self.cond_trunk(cond)
        if self.point_embedding is None:
            return features
        return features + self.point_embedding[point][:, :, None, None]

    def group_slice(self, s: int) -> slice:
        return slice(s * self.groups_per_slice, (s + 1) * self.groups_per_slice)

    def channel_slice(self, s: int) -> slice:
        return slice(s * self.slice_channels, (s + 1) * self.slice_channels)

    def slice_inputs(
        self, s: int, cond_features: Tensor, y_hat: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """What both passes of slice s share (computed once per slice): its projection of
        the conditioning features and its view of the slices decoded before it."""
        previous = y_hat[:, : s * self.slice_channels] if s else None
        return self.contexts[s].shared(self.cond_proj[s](cond_features), previous)

    def params(
        self, s: int, shared: tuple[Tensor, Tensor | None], y_hat: Tensor, anchors: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Mean and log-scale (B, G_s, H, W, d) for slice s given everything decoded so far
        (`shared` from slice_inputs, and the slice's anchors unless this is their pass),
        and the free logits (B, G_s, H, W, K) or None; fp32 even where the networks ran in
        bf16 (the encoder search's autocast), since the logits are built from them."""
        current = None if anchors else y_hat[:, self.channel_slice(s)]
        params, free = self.contexts[s](shared, current)
        params, free = params.float(), None if free is None else free.float()
        b, _, h, w = params.shape
        params = params.reshape(b, self.groups_per_slice, 2, self.dim, h, w).permute(
            0, 1, 4, 5, 2, 3
        )
        if free is not None:
            free = free.reshape(b, self.groups_per_slice, -1, h, w).permute(0, 1, 3, 4, 2)
        return params[..., 0, :], params[..., 1, :].clamp(-4.0, 4.0), free

    def code_logits(
        self,
        s: int,
        mean: Tensor,
        log_scale: Tensor,
        codebooks: Tensor,
        point: Tensor,
        free: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, G_s, n, K) over each group's codes from mean and log-scale (B, G_s, n, d),
        plus the free logits (B, G_s, n, K) when the prior has them.

        -0.5 |(c - m) / sigma|^2 expanded as a small matmul of (1/sigma^2, -2m/sigma^2)
        with (c^2, c); the dropped term |m / sigma|^2 is the same for all codes of a
        position, so the distribution is unchanged."""
        codes = codebooks[self.group_slice(s)]  # (G_s, K, d)
        precision = torch.exp(-2 * log_scale)
        features = torch.cat([precision, -2 * mean * precision], -1)
        code_features = torch.cat([codes.pow(2), codes], -1)
        quadratic = torch.einsum("bgne,gke->bgnk", features, code_features)
        if self.code_bias.dim() == 3:
            bias = self.code_bias[point][:, self.group_slice(s), None]
        else:
            bias = self.code_bias[self.group_slice(s)][None, :, None]
        logits = quadratic.mul_(-0.5).add_(bias)  # bias - 0.5 q, bit for bit, without temporaries
        return logits if free is None else logits.add_(free)
