"""Layers with a faster inference path and the same parameters (and state-dict keys) as the
CompressAI layers they replace, so trained weights load unchanged.

FusedGDN's in-place path runs only when autograd is off (``torch.no_grad`` /
``inference_mode``, as the codec runs), and its own backward (FrozenGDN) only for frozen
parameters in eval mode (the encoder search: codec.Codec freezes its model). SubpixelDeconv's
path runs whenever the layer is in eval mode, so the encoder search (refinement.py) gets it
under autograd too. In training mode both compute exactly what their parent class computes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.layers import GDN
from torch import Tensor


class FusedGDN(GDN):
    """GDN / inverse GDN whose inference path makes two passes over the activation instead
    of five: the normaliser is one 1x1 convolution of x², then sqrt/rsqrt and the product
    are applied in place (about 1.5x faster at full resolution). With frozen parameters in
    eval mode (the encoder search's backward pass) the gradient to the input has its own,
    shorter backward (FrozenGDN)."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and (self.training or self.beta.requires_grad or self.gamma.requires_grad):
            return super().forward(x)
        channels = x.shape[1]
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).reshape(channels, channels, 1, 1)
        if torch.is_grad_enabled():  # frozen, in eval mode: gradients to x only
            return FrozenGDN.apply(x, beta, gamma, self.inverse)
        norm = F.conv2d(x.square(), gamma, beta)
        norm = norm.sqrt_() if self.inverse else norm.rsqrt_()
        return norm.mul_(x)


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


# ConvTranspose2d(k=5, stride=2, padding=2, output_padding=1) written as a 3x3 convolution
# with four output phases: output row 2m + r takes input rows m-1, m, m+1 through the
# transposed kernel's taps _TAPS[r] (index 5 is a zero tap that the kernel does not have).
_TAPS = torch.tensor([[4, 2, 0], [5, 3, 1]])


class SubpixelDeconv(nn.ConvTranspose2d):
    """A stride-2, 5x5 transposed convolution (CompressAI's ``deconv``) that at inference
    runs as a 3x3 convolution followed by a pixel shuffle. The result is the same up to
    float rounding; it is much faster when there are few output channels (the image
    decoder's last layer), where PyTorch's transposed convolution is inefficient."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 5, stride=2, padding=2, output_padding=1)

    def subpixel_weight(self) -> Tensor:
        w = F.pad(self.weight, (0, 1, 0, 1))  # (in, out, 6, 6): index 5 is the zero tap
        k = w[:, :, _TAPS[:, :, None, None], _TAPS[None, None, :, :]]  # in, out, ry, jy, rx, jx
        return k.permute(1, 2, 4, 0, 3, 5).reshape(-1, self.in_channels, 3, 3)

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        if self.training or output_size is not None:
            return super().forward(x, output_size)
        bias = self.bias.repeat_interleave(4) if self.bias is not None else None
        return F.pixel_shuffle(F.conv2d(x, self.subpixel_weight(), bias, padding=1), 2)
