"""Depthwise quantization: each channel group is snapped to an entry of its own codebook."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor


def lattice_codebook(groups: int, codebook_size: int, dim: int, spacing: float = 1.0) -> Tensor:
    """Codes on an integer lattice when K is a perfect power of the group dimension.

    Starting from a lattice makes the untrained quantizer behave like rounding, which
    trains as reliably as scalar quantization (a finer lattice clips a fresh encoder's
    outputs and destabilised training); the codes then move freely.
    """
    side = round(codebook_size ** (1.0 / dim))
    if side**dim == codebook_size:
        axis = (torch.arange(side, dtype=torch.float32) - side // 2) * spacing
        grid = torch.stack(torch.meshgrid(*([axis] * dim), indexing="ij"), dim=-1)
        codes = grid.reshape(codebook_size, dim)
    else:
        codes = torch.randn(codebook_size, dim) * spacing * math.sqrt(codebook_size) / 4
    return codes.unsqueeze(0).repeat(groups, 1, 1)


class DepthwiseQuantizer(nn.Module):
    """G codebooks of K vectors of dimension C/G; G=1 is plain vector quantization.

    Latents are (B, C, H, W); group g owns channels [g*d, (g+1)*d). Indices are (B, G, H, W).
    """

    def __init__(self, channels: int, groups: int, codebook_size: int):
        super().__init__()
        self.groups = groups
        self.dim = channels // groups
        self.codebook_size = codebook_size
        self.codebooks = nn.Parameter(lattice_codebook(groups, codebook_size, self.dim))
        self.register_buffer("usage", torch.ones(groups, codebook_size))

    def split(self, z: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, G, H, W, d)."""
        b, c, h, w = z.shape
        return z.reshape(b, c // self.dim, self.dim, h, w).permute(0, 1, 3, 4, 2)

    def merge(self, v: Tensor) -> Tensor:
        """(B, G, H, W, d) -> (B, C, H, W)."""
        b, g, h, w, d = v.shape
        return v.permute(0, 1, 4, 2, 3).reshape(b, g * d, h, w)

    def assign(
        self, v: Tensor, groups: slice, logits: Tensor | None, rate_weight: Tensor
    ) -> Tensor:
        """Entropy-constrained assignment of group vectors v (B, G', n, d):
        argmin |v - c_k|^2 + rate_weight * bits_k under the prior's logits (B, G', n, K),
        rate_weight broadcast as (B or 1, 1, 1, 1).

        |v|^2 is the same for every code of a vector, and so is log-sum-exp(logits) in
        bits_k = (logsumexp - logits_k) / ln 2: both drop out of the argmin, which leaves
        |c_k|^2 - rate_weight / ln 2 * logits_k - 2 v.c_k: one batched matmul, then in place."""
        codes = self.codebooks[groups]  # (G', K, d)
        cost = torch.matmul(v, codes.transpose(1, 2) * -2.0).add_(codes.pow(2).sum(-1)[:, None])
        if logits is not None and bool((rate_weight > 0).any()):
            cost.addcmul_(logits, rate_weight, value=-1.0 / math.log(2.0))
        # min's indices are argmin's (the first of equal minima), over a short last axis
        # 2.6x as fast on the CPU (K = 64, torch 2.14)
        return cost.min(-1).indices

    def lookup(self, indices: Tensor, groups: slice = slice(None)) -> Tensor:
        """Indices (B, G', H, W) -> latent (B, G'*d, H, W)."""
        codes = self.codebooks[groups]
        g = torch.arange(codes.shape[0], device=indices.device)[None, :, None, None]
        return self.merge(codes[g, indices])

    def straight_through(self, z: Tensor, indices: Tensor, groups: slice) -> Tensor:
        """Code values forward; gradients reach both the encoder and the codebook.

        Outside the codebook's bounding box the encoder gets no decoder gradient: the
        straight-through estimate would otherwise push latents away without limit."""
        codes = self.codebooks[groups].detach()
        low = self.merge(codes.amin(1)[None, :, None, None, :])
        high = self.merge(codes.amax(1)[None, :, None, None, :])
        inside = torch.maximum(torch.minimum(z, high), low)
        return self.lookup(indices, groups) + inside - inside.detach()

    @torch.no_grad()
    def track_usage(self, indices: Tensor, groups: slice, decay: float = 0.99) -> None:
        counts = torch.zeros_like(self.usage[groups])
        flat = indices.permute(1, 0, 2, 3).reshape(indices.shape[1], -1)
        counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=counts.dtype))
        share = counts / flat.shape[1]
        self.usage[groups].mul_(decay).add_(share * (1 - decay) * self.codebook_size)

    @torch.no_grad()
    def restart_dead_codes(self, z: Tensor, threshold: float = 1e-3) -> int:
        """Move codes that (almost) nobody uses onto random encoder outputs of their group."""
        dead = self.usage < threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        v = self.split(z.detach().float()).permute(1, 0, 2, 3, 4).reshape(self.groups, -1, self.dim)
        pick = torch.randint(0, v.shape[1], (self.groups, self.codebook_size), device=z.device)
        samples = torch.gather(v, 1, pick.unsqueeze(-1).expand(-1, -1, self.dim))
        samples = samples + 0.01 * torch.randn_like(samples)
        self.codebooks.data[dead] = samples[dead]
        self.usage[dead] = 1.0
        return n_dead
