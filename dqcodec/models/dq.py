"""The hierarchical DQ autoencoder (VQ-VAE-2 style, two levels)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dqcodec.entropy_models.integer_prior import IntegerModel
from dqcodec.latent_codecs.latent_codec import DQLatentCodec
from dqcodec.layers import GDN, SubpixelDeconv, conv, deconv
from dqcodec.models.config import ModelConfig
from dqcodec.models.tiling import tiled_analysis, tiled_synthesis


def analysis(width: int) -> nn.Sequential:
    """Image -> features at stride 16."""
    return nn.Sequential(
        conv(3, width),
        GDN(width),
        conv(width, width),
        GDN(width),
        conv(width, width),
        GDN(width),
        conv(width, width),
    )


def synthesis(in_channels: int, width: int) -> nn.Sequential:
    """Stride-16 latent (+ top-level features) -> image."""
    return nn.Sequential(
        deconv(in_channels, width),
        GDN(width, inverse=True),
        deconv(width, width),
        GDN(width, inverse=True),
        deconv(width, width),
        GDN(width, inverse=True),
        SubpixelDeconv(width, 3),
    )


class DQModel(nn.Module):
    """Top level at stride 64 is coded first; its decoded features condition the bottom
    level's encoder, prior and the image decoder."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        n = config.width
        self.g_a = analysis(n)
        self.top_a = nn.Sequential(conv(n, n, 3), nn.GELU(), conv(n, config.top.channels, 3))
        self.top_s = nn.Sequential(deconv(config.top.channels, n, 3), nn.GELU(), deconv(n, n, 3))
        self.bottom_a = nn.Conv2d(2 * n, config.bottom.channels, 1)
        self.g_s = synthesis(config.bottom.channels + n, n)
        if config.linear_skip:
            s = config.bottom_stride
            self.skip_a = nn.Conv2d(3, n, s, stride=s)
            self.skip_s = nn.ConvTranspose2d(config.bottom.channels + n, 3, s, stride=s)
        prior = (
            config.rate_points,
            config.prior_kernel,
            config.prior_blocks,
            config.prior_free_logits,
        )
        self.top = DQLatentCodec(config.top, 1, config.prior_width, config.rate_weight, *prior)
        self.bottom = DQLatentCodec(
            config.bottom, n, config.prior_width, config.rate_weight, *prior
        )
        if config.rate_points > 1:
            # Per rate point and channel, the latent is scaled by exp(gain) before it is
            # snapped to the (shared) codebooks and scaled back after: a smaller gain makes
            # the codebook relatively coarser, so fewer bits (Cui et al., CVPR 2021).
            # The gains are constants, the fourth root of lambda relative to the highest
            # point's (natural-log values): the index rate gives the latent no gradient, so
            # learned gains only hear the distortion and grow until the points merge.
            start = 0.25 * torch.log(torch.tensor(config.lambdas) / max(config.lambdas))[:, None]
            self.register_buffer("top_gain", start.repeat(1, config.top.channels))
            self.register_buffer("bottom_gain", start.repeat(1, config.bottom.channels))

    def analyse(self, x: Tensor) -> Tensor:
        h = self.g_a(x)
        return h + self.skip_a(x) if self.config.linear_skip else h

    def synthesise(self, y: Tensor) -> Tensor:
        x_hat = self.g_s(y)
        return x_hat + self.skip_s(y) if self.config.linear_skip else x_hat

    @staticmethod
    def _unconditioned(z: Tensor) -> Tensor:
        return z.new_ones(z.shape[0], 1, z.shape[2], z.shape[3])

    def _gain(self, level: str, point: Tensor) -> Tensor | None:
        """(B, C, 1, 1) gains of each sample's rate point; None for a single-rate model."""
        if self.config.rate_points == 1:
            return None
        return getattr(self, f"{level}_gain")[point].exp()[:, :, None, None]

    @staticmethod
    def _scaled(z: Tensor, gain: Tensor | None) -> Tensor:
        return z if gain is None else z * gain

    @staticmethod
    def _unscaled(y: Tensor, gain: Tensor | None) -> Tensor:
        return y if gain is None else y / gain

    def _points(self, batch: int, point: Tensor | int | None, device) -> Tensor:
        """(B,) rate points; the caller (Codec, training) has checked they exist."""
        if point is None:
            point = self.config.rate_points - 1
        point = torch.as_tensor(point, dtype=torch.long, device=device).reshape(-1)
        return point.expand(batch) if point.numel() == 1 else point

    def condition_from_top(self, top_y_hat: Tensor, point: Tensor) -> Tensor:
        """The decoded top level's features, which condition everything at the bottom."""
        return self.top_s(self._unscaled(top_y_hat, self._gain("top", point)))

    def forward(self, x: Tensor, point: Tensor | int | None = None) -> dict:
        """point: rate point of each sample (B,) or of all; default the highest."""
        point = self._points(x.shape[0], point, x.device)
        x_hat, levels = self._decoded(
            self.analyse(x), point, lambda level, latent, cond, above: level(latent, cond, point)
        )
        top, bottom = levels["top"], levels["bottom"]
        return {
            "x_hat": x_hat,
            "bits": {"top": top["bits"], "bottom": bottom["bits"]},
            "sample_bits": top["sample_bits"] + bottom["sample_bits"],
            "commitment": top["commitment"] + bottom["commitment"],
            "latents": {name: latent.detach() for name, latent in levels["latents"].items()},
        }

    def reconstruct_assigned(
        self, features: Tensor, point: Tensor | int, rate_weight: float | None = None
    ) -> Tensor:
        """The image the encoder's codes for `features` decode to (unclamped), differentiable
        in the features through the straight-through estimate: what encoder-side refinement
        descends. Untiled: callers bound the size."""
        point = self._points(features.shape[0], point, features.device)
        x_hat, _ = self._decoded(
            features,
            point,
            lambda level, latent, cond, above: level.assign_straight_through(
                latent, cond, point, rate_weight
            ),
        )
        return x_hat

    def _decoded(self, features: Tensor, point: Tensor, code) -> tuple[Tensor, dict]:
        levels = self._through_levels(features, point, code)
        y = self._unscaled(levels["bottom"]["y_hat"], self._gain("bottom", point))
        return self.synthesise(torch.cat([y, levels["cond"]], 1)), levels

    def _through_levels(self, features: Tensor, point: Tensor, code) -> dict:
        """The encoder's walk down the hierarchy, shared by training, coding and code
        assignment: code(level, latent, cond, above) -> dict with "y_hat" and "indices" runs
        each level; above is the top level's result when the bottom level runs, else None."""
        t = self._scaled(self.top_a(features), self._gain("top", point))
        top = code(self.top, t, self._unconditioned(t), None)
        cond = self.condition_from_top(top["y_hat"], point)
        z = self._scaled(self.bottom_a(torch.cat([features, cond], 1)), self._gain("bottom", point))
        return {
            "top": top,
            "bottom": code(self.bottom, z, cond, top),
            "cond": cond,
            "latents": {"top": t, "bottom": z},
        }

    @torch.no_grad()
    def analyse_image(self, x: Tensor) -> Tensor:
        """analyse(x) of a whole image in bounded memory: the features `compress` codes."""
        x = x.contiguous(memory_format=torch.channels_last)  # faster CPU convolutions
        return tiled_analysis(self.analyse, x, stride=self.config.bottom_stride)

    @torch.no_grad()
    def compress(
        self,
        x: Tensor,
        rate_weight: float | None = None,
        point: int | None = None,
        features: Tensor | None = None,
        integer: IntegerModel | None = None,
    ) -> dict:
        """features: `analyse_image(x)` when the caller already has it (refined, say);
        integer: the integer prior of `point` that makes the probabilities (None: the float
        prior, format version 1)."""
        point = self._points(1, point, x.device)
        h = self.analyse_image(x) if features is None else features
        levels = self._through_levels(
            h,
            point,
            lambda level, latent, cond, above: level.compress(
                latent,
                cond,
                point,
                rate_weight,
                _integer_level(integer, level is self.top, latent, above),
            ),
        )
        top, bottom = levels["top"], levels["bottom"]
        return {
            "strings": [top["string"], bottom["string"]],
            "shape": tuple(levels["latents"]["top"].shape[-2:]),
            "information_bits": top["information_bits"] + bottom["information_bits"],
            "indices": {"top": top["indices"], "bottom": bottom["indices"]},
        }

    @torch.no_grad()
    def assign_codes(self, features: Tensor, point: int) -> dict:
        """The codes `compress` would code at one rate point, from `analyse(x)`'s features
        (shared by all points), without range coding: top and bottom indices (1, G, h, w)
        and the bottom level's conditioning features (1, N, h, w)."""
        point = self._points(1, point, features.device)
        levels = self._through_levels(
            features, point, lambda level, latent, cond, above: level.assign(latent, cond, point)
        )
        return {
            "top": levels["top"]["indices"],
            "bottom": levels["bottom"]["indices"],
            "cond": levels["cond"],
        }

    def synthesise_inplace(self, y: Tensor) -> Tensor:
        """synthesise(y) at inference in the least memory, with the same values: the layers
        run one by one, each activation is dropped as soon as the next layer has it, and the
        inverse GDNs work in place, band by band (GDN.forward_), so the peak is the largest
        transposed convolution's input and output instead of three maps of the largest size.
        Under autograd or in training mode it is `synthesise`."""
        if torch.is_grad_enabled() or self.training:
            return self.synthesise(y)
        x = y
        for layer in self.g_s:
            x = layer.forward_(x) if isinstance(layer, GDN) else layer(x)
        if self.config.linear_skip:
            x = x.add_(self.skip_s(y))
        return x

    @torch.no_grad()
    def decode_latents(
        self,
        strings: list[bytes],
        shape: tuple[int, int],
        point: int | None = None,
        integer: IntegerModel | None = None,
    ) -> dict:
        """The entropy-decoding half of `decompress`: the synthesis input "y" (1, C + N, h, w),
        channels-last, and the decoded "indices"."""
        point = self._points(1, point, None)
        ones = torch.ones(1, 1, *shape)
        top = self.top.decompress(
            strings[0], ones, point, _integer_level(integer, True, ones, None)
        )
        # the integer prior reads the top level's indices: the float features wait for the
        # synthesis, so that they are not held while the bottom level decodes
        cond = self.condition_from_top(top["y_hat"], point) if integer is None else None
        bottom = self.bottom.decompress(
            strings[1], cond, point, _integer_level(integer, False, cond, top)
        )
        indices = {"top": top["indices"], "bottom": bottom["indices"]}
        y_hat = bottom.pop("y_hat")
        channels = y_hat.shape[1]
        y = torch.empty(  # written in place: no concatenated copy to convert
            1, channels + self.config.width, *y_hat.shape[2:], memory_format=torch.channels_last
        )
        y[:, :channels] = y_hat
        del y_hat
        gain = self._gain("bottom", point)
        if gain is not None:
            y[:, :channels].div_(gain)  # _unscaled, in place
        y[:, channels:] = cond if cond is not None else self.condition_from_top(top["y_hat"], point)
        return {"y": y, "indices": indices}

    @torch.no_grad()
    def decompress(
        self,
        strings: list[bytes],
        shape: tuple[int, int],
        point: int | None = None,
        integer: IntegerModel | None = None,
        write: Callable[[Tensor, int, int], None] | None = None,
    ) -> dict:
        """The image "x_hat" (1, 3, 16h, 16w) in [0, 1] and the decoded "indices". With `write`, the
        image is not assembled: each synthesis tile's core goes to write(core, top, left)
        as it is made (unclamped; see tiling.tiled_synthesis) and "x_hat" is None."""
        latents = self.decode_latents(strings, shape, point, integer)
        y = latents.pop("y")
        x_hat = tiled_synthesis(
            self.synthesise_inplace, y, stride=self.config.bottom_stride, write=write
        )
        return {
            "x_hat": None if x_hat is None else x_hat.clamp_(0, 1),
            "indices": latents["indices"],
        }


def _integer_level(integer: IntegerModel | None, top: bool, latent: Tensor, above: dict | None):
    """(integer prior, int8 conditioning) of one level, or None on the float path."""
    if integer is None:
        return None
    if top:
        return integer.top, integer.top_input(*latent.shape[-2:])
    return integer.bottom, integer.condition(above["indices"])


def pad_to_stride(x: Tensor, stride: int) -> Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")
