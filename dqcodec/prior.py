"""Autoregressive prior over code indices, run as a fixed schedule of parallel passes.

The groups of a level are split into slices. Each slice is coded in two checkerboard
halves (anchors first), so a level takes 2 x slices passes whatever the image size. The
prior for a pass sees the conditioning features (the level above), every slice already
decoded, and the anchors of the current slice.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class Pass(NamedTuple):
    slice_index: int
    anchors: bool  # True: the anchor half of the checkerboard, False: the other half


def pass_schedule(slices: int) -> Iterator[Pass]:
    for s in range(slices):
        yield Pass(s, True)
        yield Pass(s, False)


def checkerboard(height: int, width: int, device=None) -> Tensor:
    """Boolean (H, W) mask of anchor positions: (i + j) even."""
    i = torch.arange(height, device=device)[:, None]
    j = torch.arange(width, device=device)[None, :]
    return (i + j) % 2 == 0


def code_bits(logits: Tensor, indices: Tensor) -> Tensor:
    """Information content in bits of each index under its categorical."""
    nats = -F.log_softmax(logits, dim=-1).gather(-1, indices.unsqueeze(-1)).squeeze(-1)
    return nats / math.log(2.0)


class SliceContext(nn.Module):
    """Predicts, per group of one slice, a mean and scale in code space."""

    def __init__(self, cond_width: int, prev_channels: int, slice_channels: int, width: int, out: int):
        super().__init__()
        self.spatial = nn.Conv2d(slice_channels, width, 5, padding=2)
        self.channel = nn.Conv2d(prev_channels, width, 1) if prev_channels else None
        self.head = nn.Sequential(
            nn.GELU(), nn.Conv2d(width, width, 1), nn.GELU(), nn.Conv2d(width, out, 1)
        )

    def forward(self, cond_features: Tensor, previous: Tensor | None, current: Tensor) -> Tensor:
        h = cond_features + self.spatial(current)
        if self.channel is not None:
            h = h + self.channel(previous)
        return self.head(h)


class CodePrior(nn.Module):
    """Categorical over each group's K codes: a Gaussian bump around a predicted point
    of code space plus a learned per-code bias. Tying the distribution to the codebook
    geometry lets it learn as fast as a Gaussian conditional."""

    def __init__(self, cond_channels: int, channels: int, groups: int, codebook_size: int,
                 slices: int, width: int, rate_points: int = 1):
        super().__init__()
        self.groups_per_slice = groups // slices
        self.dim = channels // groups
        slice_channels = channels // slices
        self.cond_trunk = nn.Sequential(nn.Conv2d(cond_channels, width, 3, padding=1), nn.GELU())
        self.cond_proj = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(slices))
        self.contexts = nn.ModuleList(
            SliceContext(width, s * slice_channels, slice_channels, width,
                         2 * self.groups_per_slice * self.dim)
            for s in range(slices)
        )
        # a variable-rate model has a bias per rate point: how peaked each group's marginal
        # is depends on how coarsely the point quantizes
        bias_shape = (rate_points, groups, codebook_size) if rate_points > 1 else (groups, codebook_size)
        self.code_bias = nn.Parameter(torch.zeros(bias_shape))
        self.slice_channels = slice_channels
        # a variable-rate model tells the prior which rate point each sample is coded at
        self.point_embedding = nn.Parameter(torch.zeros(rate_points, width)) if rate_points > 1 else None

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

    def params(self, s: int, cond_features: Tensor, y_hat: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-scale (B, G_s, H, W, d) for slice s given everything decoded so far."""
        previous = y_hat[:, : s * self.slice_channels] if s else None
        current = y_hat[:, self.channel_slice(s)]
        params = self.contexts[s](self.cond_proj[s](cond_features), previous, current)
        b, _, h, w = params.shape
        params = params.reshape(b, self.groups_per_slice, 2, self.dim, h, w).permute(0, 1, 4, 5, 2, 3)
        return params[..., 0, :], params[..., 1, :].clamp(-4.0, 4.0)

    def code_logits(self, s: int, mean: Tensor, log_scale: Tensor, codebooks: Tensor,
                    point: Tensor) -> Tensor:
        """Logits (B, G_s, n, K) over each group's codes from mean and log-scale (B, G_s, n, d).

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
        return bias - 0.5 * quadratic
