"""A tiny random model and synthetic photos, for tests and the fuzzer (no trained weights
needed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

from dqcodec.models.config import LevelConfig, ModelConfig
from dqcodec.models.dq import DQModel

TINY = ModelConfig(
    width=16,
    bottom=LevelConfig(channels=8, groups=4, codebook_size=16, slices=2),
    top=LevelConfig(channels=4, groups=2, codebook_size=16, slices=1),
    prior_width=16,
)


def tiny_model(seed: int = 0, config: ModelConfig = TINY) -> DQModel:
    torch.manual_seed(seed)
    model = DQModel(config)
    with torch.no_grad():  # spread latents over several codes so the prior has work to do
        model.bottom_a.weight.mul_(20)
        model.top_a[-1].weight.mul_(20)
    return model.eval()


def tiny_variable_rate_model(seed: int = 0, lambdas=(0.001, 0.01, 0.1)) -> DQModel:
    """A tiny model with three rate points whose gains differ (lowest rate first)."""
    model = tiny_model(seed, dataclasses.replace(TINY, lambdas=tuple(lambdas)))
    with torch.no_grad():
        steps = torch.linspace(-1.5, 0.0, len(lambdas))[:, None]
        model.bottom_gain.copy_(steps.expand_as(model.bottom_gain))
        model.top_gain.copy_(steps.expand_as(model.top_gain))
    return model.eval()


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, photo-like test image (gradients plus texture)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([x / max(width, 1), y / max(height, 1), (x + y) / max(width + height, 1)], -1)
    texture = rng.normal(0, 0.05, (height, width, 3))
    array = np.clip((0.2 + 0.6 * base + texture) * 255, 0, 255).astype(np.uint8)
    return Image.fromarray(array, "RGB")
