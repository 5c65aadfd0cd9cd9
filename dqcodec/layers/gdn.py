"""Generalized divisive normalization (Ballé, Laparra & Simoncelli, 2016) with CompressAI's
parametrization, parameter names and state-dict keys, so weights trained with either load in
both. It lives here so that decoding does not import compressai (whose package import loads
its point-cloud datasets and takes seconds); tests check it against ``compressai.layers.GDN``.

The in-place inference path runs only when autograd is off (``torch.no_grad`` /
``inference_mode``, as the codec runs), and its own backward (FrozenGDN) only for frozen
parameters in eval mode (the encoder search: codec.Codec freezes its model). In training mode
it computes exactly what CompressAI's GDN computes, gradients included.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class _LowerBoundFunction(torch.autograd.Function):
    """max(x, bound), whose gradient passes where x is above the bound or the step would
    raise it (so a parameter at its bound can leave it)."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: Tensor) -> Tensor:
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, bound = ctx.saved_tensors
        return grad * ((x >= bound) | (grad < 0)), None


class LowerBound(nn.Module):
    bound: Tensor

    def __init__(self, bound: float):
        super().__init__()
        self.register_buffer("bound", torch.tensor([float(bound)]))

    def forward(self, x: Tensor) -> Tensor:
        return _LowerBoundFunction.apply(x, self.bound)


class NonNegative(nn.Module):
    """A value kept non-negative (at least `minimum`) by storing the square root of its value
    plus a small pedestal, which keeps gradients alive near zero."""

    pedestal: Tensor

    def __init__(self, minimum: float = 0.0, offset: float = 2**-18):
        super().__init__()
        self.register_buffer("pedestal", torch.tensor([offset**2]))
        self.lower_bound = LowerBound((minimum + offset**2) ** 0.5)

    def init(self, x: Tensor) -> Tensor:
        return torch.sqrt(torch.max(x + self.pedestal, self.pedestal))

    def forward(self, x: Tensor) -> Tensor:
        return self.lower_bound(x) ** 2 - self.pedestal


class GDN(nn.Module):
    """y = x / sqrt(beta + gamma x²) per position (inverse: y = x * sqrt(...)), the sum over
    channels. At inference it makes two passes over the activation instead of five: the
    normaliser is one 1x1 convolution of x², then sqrt/rsqrt and the product are applied in
    place (about 1.5x faster at full resolution)."""

    def __init__(
        self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1
    ):
        super().__init__()
        self.inverse = bool(inverse)
        self.beta_reparam = NonNegative(minimum=beta_min)
        self.beta = nn.Parameter(self.beta_reparam.init(torch.ones(channels)))
        self.gamma_reparam = NonNegative()
        self.gamma = nn.Parameter(self.gamma_reparam.init(gamma_init * torch.eye(channels)))

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and (
            self.training or self.beta.requires_grad or self.gamma.requires_grad
        ):
            return self._reference(x)
        channels = x.shape[1]
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).reshape(channels, channels, 1, 1)
        if torch.is_grad_enabled():  # frozen, in eval mode: gradients to x only
            return FrozenGDN.apply(x, beta, gamma, self.inverse)
        norm = F.conv2d(x.square(), gamma, beta)
        norm = norm.sqrt_() if self.inverse else norm.rsqrt_()
        return norm.mul_(x)

    @torch.no_grad()
    def forward_(self, x: Tensor, band: int = 1 << 20) -> Tensor:
        """forward(x) written over x, for a caller that has no further use for x (inference
        only). Computed in bands of whole rows of about `band` elements, so the extra memory
        is two bands (x² and the normaliser) instead of two activations the size of x. The
        normaliser is a 1x1 convolution, per position, so the bands give the same values as
        the whole (tests/test_memory.py checks this bitwise)."""
        if torch.is_grad_enabled() or self.training:
            raise RuntimeError("GDN.forward_ is for inference (eval mode, autograd off)")
        channels, rows = x.shape[1], x.shape[2]
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).reshape(channels, channels, 1, 1)
        step = max(1, band // max(1, x.shape[0] * channels * x.shape[3]))
        for start in range(0, rows, step):
            part = x[:, :, start : start + step]
            norm = F.conv2d(part.square(), gamma, beta)
            part.mul_(norm.sqrt_() if self.inverse else norm.rsqrt_())
            del norm
        return x

    def _reference(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        gamma = self.gamma_reparam(self.gamma).reshape(channels, channels, 1, 1)
        norm = F.conv2d(x**2, gamma, self.beta_reparam(self.beta))
        return x * (torch.sqrt(norm) if self.inverse else torch.rsqrt(norm))


class FrozenGDN(torch.autograd.Function):
    """y = x * s with s = sqrt(n) (inverse) or 1/sqrt(n), n = beta + gamma * x² (a 1x1
    convolution), differentiable in x only. Its backward is one 1x1 convolution and four
    passes over the activation; autograd's graph of the same five ops takes about twice
    that, which matters at full resolution. Computes in x's dtype (bf16 under autocast)."""

    @staticmethod
    def forward(ctx, x: Tensor, beta: Tensor, gamma: Tensor, inverse: bool) -> Tensor:
        gamma = gamma.to(x.dtype)
        norm = F.conv2d(x.square(), gamma, beta.to(x.dtype))
        scale = norm.sqrt_() if inverse else norm.rsqrt_()
        ctx.save_for_backward(x, scale, gamma)
        ctx.inverse = inverse
        return x * scale

    @staticmethod
    def backward(ctx, grad: Tensor):
        # dL/dx = grad * s + 2x * gamma^T(dL/dn), dL/dn = grad * x * ds/dn, where
        # ds/dn = 1/(2s) for the inverse GDN and -s³/2 for the GDN.
        x, scale, gamma = ctx.saved_tensors
        grad = grad.to(x.dtype)
        twice_dn = grad * x
        twice_dn = twice_dn.div_(scale) if ctx.inverse else twice_dn.mul_(scale.pow(3)).neg_()
        back = F.conv2d(twice_dn, gamma.transpose(0, 1))
        return back.mul_(x).addcmul_(grad, scale), None, None, None
