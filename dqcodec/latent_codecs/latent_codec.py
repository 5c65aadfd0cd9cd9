"""One level of the hierarchy: depthwise quantizer + pass-scheduled prior + range coding.

Training, encoding and decoding all go through `_run_passes`, so the encoder computes
every probability with exactly the computation the decoder will repeat.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from dqcodec.entropy_models.integer_prior import IntegerCodePrior, IntegerPasses, as_float_logits
from dqcodec.entropy_models.passes import Pass, pass_schedule, row_blocks
from dqcodec.entropy_models.prior import CodePrior, checkerboard, code_bits
from dqcodec.latent_codecs.quantizer import DepthwiseQuantizer
from dqcodec.models.config import LevelConfig
from dqcodec.range_coding import IndexDecoder, IndexEncoder

# chooser(pass, group slice, logits (B,G_s,n,K), rows, positions (h,W) bool, table) -> indices
# (B,G_s,n) for the n positions of the pass (positions[rows] true, in row-major order); table
# is the integer prior's frequency table (B,G_s,n,K), its logits then integers in float64
# (integer_prior.as_float_logits makes nats of them), or None where the float prior codes
Chooser = Callable[[Pass, slice, Tensor, slice, Tensor, Tensor | None], Tensor]


class DQLatentCodec(nn.Module):
    """CompressAI's LatentCodec interface (forward / compress / decompress) for one level."""

    def __init__(
        self,
        level: LevelConfig,
        cond_channels: int,
        prior_width: int,
        rate_weight: float | Tensor,
        rate_points: int = 1,
        prior_kernel: int = 1,
        prior_blocks: int = 0,
        prior_free_logits: bool = False,
    ):
        super().__init__()
        self.level = level
        self.rate_weight = rate_weight  # a float, or one per sample (B,) while training
        self.quantizer = DepthwiseQuantizer(level.channels, level.groups, level.codebook_size)
        self.prior = CodePrior(
            cond_channels,
            level.channels,
            level.groups,
            level.codebook_size,
            level.slices,
            prior_width,
            rate_points,
            prior_kernel,
            prior_blocks,
            prior_free_logits,
        )

    def _row_blocks(self, batch: int, height: int, width: int) -> list[slice]:
        per_row = (
            batch
            * self.prior.groups_per_slice
            * width
            * self.level.codebook_size
            * self.quantizer.dim
        )
        return row_blocks(per_row, height)

    def _run_passes(
        self,
        cond: Tensor | None,
        point: Tensor,
        choose: Chooser,
        straight_through: Tensor | None = None,
        integer: tuple[IntegerCodePrior, np.ndarray] | None = None,
    ):
        """Walk the pass schedule; returns y_hat, indices and (when training, i.e. with
        straight_through) the logits each index was coded with. Each pass computes
        logits only at the positions it codes (half of a checkerboard). With `integer`
        (the integer prior and its int8 conditioning) the integer prior makes the
        probabilities (`IntegerPasses`, in NumPy; `cond` is then unused and may be None);
        otherwise the float prior does. A frozen prior (no parameter that requires a
        gradient) computes its logits outside the autograd graph."""
        if integer is not None:
            indices = torch.from_numpy(IntegerPasses(*integer).run(_on_arrays(choose)))
            return self.quantizer.lookup(indices), indices, []
        (b, _, h, w), device = cond.shape, cond.device
        prior_graph = (
            torch.no_grad()
            if straight_through is not None and not self.prior_trains()
            else contextlib.nullcontext()
        )
        with prior_graph:
            model = FloatPasses(self.prior, cond, point, self.quantizer.codebooks)
        anchors = checkerboard(h, w, device)
        y_hat = torch.zeros(b, self.level.channels, h, w, device=device)
        indices = torch.zeros(b, self.level.groups, h, w, dtype=torch.long, device=device)
        # Training codes nothing, so it needs no block boundaries to agree on: one block
        # keeps the kernel count of a step independent of the batch size.
        blocks = [slice(0, h)] if straight_through is not None else self._row_blocks(b, h, w)
        all_logits = []
        for p in pass_schedule(self.level.slices):
            s = p.slice_index
            groups, channels = self.prior.group_slice(s), self.prior.channel_slice(s)
            positions = anchors if p.anchors else ~anchors
            with prior_graph:
                if p.anchors:  # the slice's first pass
                    model.begin_slice(s, y_hat)
                params = model.params(s, y_hat, p.anchors, positions)
            chosen = torch.zeros_like(indices[:, groups])
            for rows in blocks:
                mask = positions[rows]
                with torch.autocast(device.type, enabled=False), prior_graph:  # fp32
                    logits, table = model.logits(s, params, rows, mask)
                    chosen[:, :, rows][:, :, mask] = choose(p, groups, logits, rows, mask, table)
                if straight_through is not None:
                    all_logits.append((groups, rows, mask, logits))
            if straight_through is not None:
                values = self.quantizer.straight_through(
                    straight_through[:, channels], chosen, groups
                )
                y_hat = y_hat.clone()  # autograd needs the earlier passes' y_hat
            else:
                values = self.quantizer.lookup(chosen, groups)
            y_hat[:, channels] = torch.where(positions, values, y_hat[:, channels])
            indices[:, groups] = torch.where(positions, chosen, indices[:, groups])
        return y_hat, indices, all_logits

    def prior_trains(self) -> bool:
        return any(p.requires_grad for p in self.prior.parameters())

    def _assigner(self, z: Tensor, rate_weight: float | Tensor | None = None) -> Chooser:
        weight = self.rate_weight if rate_weight is None else rate_weight
        weight = torch.as_tensor(weight, dtype=z.dtype, device=z.device).reshape(-1, 1, 1, 1)
        vectors = self.quantizer.split(z.detach())  # (B, G, H, W, d)

        def choose(
            p: Pass, groups: slice, logits: Tensor, rows: slice, mask: Tensor, table: Tensor | None
        ) -> Tensor:
            return self.quantizer.assign(
                vectors[:, groups, rows][:, :, mask], groups, logits.detach(), weight
            )

        return choose

    def forward(self, z: Tensor, cond: Tensor, point: Tensor) -> dict:
        # The prior's probabilities need fp32 even when the transforms train in bf16.
        with torch.autocast(z.device.type, enabled=False):
            return self._forward(z.float(), cond.float(), point)

    @staticmethod
    def _bits(all_logits: list, indices: Tensor, weights: Tensor | None = None) -> Tensor:
        """Bits of each sample (B,); weights (B, H, W), when given, scale each position's bits."""
        bits = indices.new_zeros(indices.shape[0], dtype=torch.float32)
        for groups, rows, mask, logits in all_logits:
            each = code_bits(logits, indices[:, groups, rows][:, :, mask])
            if weights is not None:
                each = each * weights[:, rows][:, mask][:, None]
            bits = bits + each.flatten(1).sum(1)
        return bits

    def _forward(self, z: Tensor, cond: Tensor, point: Tensor) -> dict:
        y_hat, indices, all_logits = self._run_passes(
            cond, point, self._assigner(z), straight_through=z
        )
        sample_bits = self._bits(all_logits, indices)
        for g in range(0, self.level.groups, self.prior.groups_per_slice):
            sl = slice(g, g + self.prior.groups_per_slice)
            self.quantizer.track_usage(indices[:, sl], sl)
        commitment = (z - y_hat.detach()).pow(2).mean()
        return {
            "y_hat": y_hat,
            "bits": sample_bits.sum(),
            "sample_bits": sample_bits,
            "indices": indices,
            "commitment": commitment,
        }

    @torch.no_grad()
    def assign(
        self, z: Tensor, cond: Tensor, point: Tensor, rate_weight: float | None = None
    ) -> dict:
        """y_hat and indices as the encoder would choose them, without coding them. Under a
        caller's bf16 autocast (only the encoder search uses one) the prior's networks run in
        bf16; the logits and the choices are always fp32."""
        y_hat, indices, _ = self._run_passes(
            cond.float(), point, self._assigner(z.float(), rate_weight)
        )
        return {"y_hat": y_hat, "indices": indices}

    def assign_straight_through(
        self, z: Tensor, cond: Tensor, point: Tensor, rate_weight: float | None = None
    ) -> dict:
        """`assign`'s codes, with the straight-through gradient to z: what encoder-side
        refinement descends (the prior only picks the codes; it gets no gradient)."""
        indices = self.assign(z, cond, point, rate_weight)["indices"]
        return {
            "y_hat": self.quantizer.straight_through(z.float(), indices, slice(None)),
            "indices": indices,
        }

    def information(
        self, indices: Tensor, cond: Tensor, point: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        """Total bits the prior gives known indices (B, G, H, W): what coding them costs,
        each position's bits scaled by weights (B, H, W) when given. Differentiable in the
        prior's parameters."""

        def choose(
            p: Pass, groups: slice, logits: Tensor, rows: slice, mask: Tensor, table: Tensor | None
        ) -> Tensor:
            return indices[:, groups, rows][:, :, mask]

        y_hat = self.quantizer.lookup(indices).detach()
        _, _, all_logits = self._run_passes(cond, point, choose, straight_through=y_hat)
        return self._bits(all_logits, indices, weights).sum()

    @torch.no_grad()
    def compress(
        self,
        z: Tensor,
        cond: Tensor,
        point: Tensor,
        rate_weight: float | None = None,
        integer: tuple[IntegerCodePrior, np.ndarray] | None = None,
    ) -> dict:
        """rate_weight overrides the trained assignment strength: the decoder does not
        depend on it, so one model serves several rates. integer: code with the integer
        prior (and its int8 conditioning) instead of the float one."""
        encoder = IndexEncoder()
        assign = self._assigner(z, rate_weight)

        def choose(
            p: Pass, groups: slice, logits: Tensor, rows: slice, mask: Tensor, table: Tensor | None
        ) -> Tensor:
            nats = logits if table is None else torch.from_numpy(as_float_logits(logits.numpy()))
            chosen = assign(p, groups, nats, rows, mask, table)
            encoder.encode(chosen, logits, table)
            return chosen

        y_hat, indices, _ = self._run_passes(cond, point, choose, integer=integer)
        return {
            "string": encoder.finish(),
            "y_hat": y_hat,
            "indices": indices,
            "information_bits": encoder.information_bits,
        }

    @torch.no_grad()
    def decompress(
        self,
        string: bytes,
        cond: Tensor | None,
        point: Tensor,
        integer: tuple[IntegerCodePrior, np.ndarray] | None = None,
    ) -> dict:
        """cond: the float conditioning; None where `integer` codes, which needs only its own."""
        decoder = IndexDecoder(string)

        def choose(
            p: Pass, groups: slice, logits: Tensor, rows: slice, mask: Tensor, table: Tensor | None
        ) -> Tensor:
            return torch.from_numpy(decoder.decode(logits, table))

        y_hat, indices, _ = self._run_passes(cond, point, choose, integer=integer)
        return {"y_hat": y_hat, "indices": indices}


def _on_arrays(choose: Chooser):
    """A chooser of tensors as IntegerPasses calls it, with NumPy arrays in and out."""

    def choose_arrays(p: Pass, groups: slice, logits, rows: slice, mask, table):
        picked = choose(
            p,
            groups,
            torch.from_numpy(logits),
            rows,
            torch.from_numpy(mask),
            torch.from_numpy(table),
        )
        return np.asarray(picked)

    return choose_arrays


class FloatPasses:
    """The float prior's side of the pass walk (IntegerPasses is the integer one)."""

    def __init__(self, prior: CodePrior, cond: Tensor, point: Tensor, codebooks: Tensor):
        self.prior, self.point, self.codebooks = prior, point, codebooks
        self.features = prior.condition(cond, point)

    def begin_slice(self, s: int, y_hat: Tensor) -> None:
        self.shared = self.prior.slice_inputs(s, self.features, y_hat)

    def params(self, s: int, y_hat: Tensor, anchors: bool, positions: Tensor) -> tuple:
        return self.prior.params(s, self.shared, y_hat, anchors)

    def logits(self, s: int, params: tuple, rows: slice, mask: Tensor) -> tuple[Tensor, None]:
        mean, log_scale, free = (None if t is None else t[:, :, rows][:, :, mask] for t in params)
        return self.prior.code_logits(s, mean, log_scale, self.codebooks, self.point, free), None
