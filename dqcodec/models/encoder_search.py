"""Encoder-side search (`--effort`): refine one image's analysis features by gradient
descent so that the codes they are assigned decode closer to the image.

The analysis transform answers in one forward pass, trained over many photos; a few
gradient steps on one image close part of that amortisation gap (Campos et al., CVPR-W
2019; Yang et al., NeurIPS 2020). Only the encoder changes: the refined features go
through the usual code assignment and range coding, so decoders and files are unaffected.

The analysis transform (at every effort) and the search's transforms and prior networks run
in bf16 where the CPU or GPU has fast bf16 arithmetic (the logits and the code choices stay
fp32): at effort 0 the curve moved by -0.04% (levels 1-3) and +0.10% (levels 4-9) BD-rate on
the 16 held-out photos for a third less encoding time. Only the encoder's choice of features
depends on it, never what a decoder computes.

What is descended is the distortion alone. The codes stay rate-aware (each step reassigns
them with the model's entropy-constrained assignment), and few steps keep the features
near the encoder's answer; adding the prior's bits to the loss, or more steps, measured
worse (docs/design_notes.md, encoder search).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dqcodec.errors import DQError
from dqcodec.hardware import bf16_supported
from dqcodec.models.dq import DQModel
from dqcodec.models.tiling import tile_spans
from dqcodec.options import DEFAULT_EFFORT, EFFORT_LEVELS  # noqa: F401  (DEFAULT_EFFORT re-exported)


class Search(NamedTuple):
    steps: int  # Adam steps on the features
    lr: float  # on features whose typical magnitude is ~1


# BD-rate against effort 0, levels 4-9 on the 16 held-out photos (docs/design_notes.md): one
# step at 0.12 -7.1% (Adam's first step moves every feature by lr along the sign of its
# gradient); three steps at 0.05 -9.2% for three times the search; longer searches raise the rate.
# The single-rate levels 1-3 search at 0.667 of these steps (search_scale in models/zoo.json).
EFFORTS = (Search(0, 0.0), Search(1, 0.12), Search(3, 0.05))
# The default encoder must stay within the Kodak speed targets of docs/performance.md (at most
# 0.5 s and 1.5x the hyperprior's encoding time); one step fits, three do not.
assert len(EFFORTS) == EFFORT_LEVELS
WINDOW = 48  # features (768 px) per window side: bounds the memory of the backward pass
MARGIN = 4  # features of context around each window (one top-level position)


def search_for(effort: int) -> Search:
    if not 0 <= effort < len(EFFORTS):
        raise DQError(f"effort {effort} does not exist (0-{len(EFFORTS) - 1})")
    return EFFORTS[effort]


def encoder_features(
    model: DQModel,
    x: Tensor,
    point: int,
    effort: int,
    rate_weight: float | None = None,
    size: tuple[int, int] | None = None,
    step_scale: float = 1.0,
) -> Tensor:
    """The features `model.compress` codes for the padded image x at this effort; a quality
    level may scale the effort's step size (`search_scale` in models/zoo.json)."""
    search = search_for(effort)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16_supported(x.device)):
        features = model.analyse_image(x).float()
    if search.steps == 0:
        return features
    scaled = search._replace(lr=search.lr * step_scale)
    return refine_features(model, x, features, point, scaled, rate_weight, size)


def refine_features(
    model: DQModel,
    x: Tensor,
    features: Tensor,
    point: int,
    search: Search,
    rate_weight: float | None = None,
    size: tuple[int, int] | None = None,
    window: int = WINDOW,
    margin: int = MARGIN,
) -> Tensor:
    """Refined copy of `features` (1, N, h, w) = model.analyse_image(x) for the padded
    image x (1, 3, 16h, 16w); `size` (height, width) is the image before padding, the
    only pixels the distortion counts. Large images are refined window by window, each
    window with `margin` features of context that are refined along but thrown away."""
    if search.steps <= 0:
        return features
    height, width = size if size is not None else x.shape[-2:]
    scale = model.config.bottom_stride
    refined = features.clone()
    for rows, cols in windows(
        features.shape[-2:], model.config.top_stride // scale, window, margin
    ):
        (r0, r1, cr0, cr1), (c0, c1, cc0, cc1) = rows, cols
        target = x[..., r0 * scale : min(height, r1 * scale), c0 * scale : min(width, c1 * scale)]
        part = _descend(model, target, features[..., r0:r1, c0:c1], point, search, rate_weight)
        refined[..., cr0:cr1, cc0:cc1] = part[..., cr0 - r0 : cr1 - r0, cc0 - c0 : cc1 - c0]
    return refined


def windows(shape: tuple[int, int], align: int, window: int, margin: int):
    """(row span, column span) pairs as tiling.tile_spans gives them, with every boundary
    on a multiple of `align` features, so each window holds whole top-level positions."""

    def spans(length: int):
        return [
            tuple(align * v for v in span)
            for span in tile_spans(length // align, max(1, window // align), -(-margin // align))
        ]

    if shape[0] % align or shape[1] % align:
        raise ValueError(f"features {shape} are not a whole number of top-level positions")
    return [(r, c) for r in spans(shape[0]) for c in spans(shape[1])]


def _descend(
    model: DQModel,
    target: Tensor,
    start: Tensor,
    point: int,
    search: Search,
    rate_weight: float | None,
) -> Tensor:
    """Adam on the features of one window; `target` may stop short of the window's padded
    extent at the image's bottom/right border."""
    h = start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([h], lr=search.lr)
    height, width = target.shape[-2:]
    bf16 = bf16_supported(h.device)
    with torch.enable_grad():
        for _ in range(search.steps):
            with torch.autocast(h.device.type, dtype=torch.bfloat16, enabled=bf16):
                x_hat = model.reconstruct_assigned(h, point, rate_weight)[..., :height, :width]
            loss = F.mse_loss(x_hat.float(), target)
            (h.grad,) = torch.autograd.grad(loss, [h])  # no gradients for the weights
            optimizer.step()
    return h.detach()
