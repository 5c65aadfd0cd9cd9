"""Strided convolutions of the analysis and synthesis transforms (CompressAI's ``conv`` and
``deconv`` shapes), and a faster inference path for the image decoder's last layer.

SubpixelDeconv's path runs whenever the layer is in eval mode, so the encoder search gets it
under autograd too; in training mode it computes exactly what ConvTranspose2d computes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def conv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2
    )


def deconv(
    in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2
) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        output_padding=stride - 1,
    )


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
