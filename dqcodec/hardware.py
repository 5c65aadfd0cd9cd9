"""What the machine's arithmetic supports."""

from __future__ import annotations

import torch


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 convolutions are fast here: CUDA with bf16, or a CPU with AVX512-BF16 / AMX
    (oneDNN's check)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
