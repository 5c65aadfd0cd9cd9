import os

import numpy as np
import pytest
import torch
from PIL import Image

from dqcodec.config import LevelConfig, ModelConfig
from dqcodec.model import DQCodec
from dqcodec.zoo import save_model

TINY = ModelConfig(
    width=16,
    bottom=LevelConfig(channels=8, groups=4, codebook_size=16, slices=2),
    top=LevelConfig(channels=4, groups=2, codebook_size=16, slices=1),
    prior_width=16,
)


def tiny_model(seed: int = 0) -> DQCodec:
    torch.manual_seed(seed)
    model = DQCodec(TINY)
    with torch.no_grad():  # spread latents over several codes so the prior has work to do
        model.bottom_a.weight.mul_(20)
        model.top_a[-1].weight.mul_(20)
    return model.eval()


@pytest.fixture(scope="session")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_model(tiny_model(0), path)
    return path


@pytest.fixture(scope="session")
def other_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "other.safetensors"
    save_model(tiny_model(1), path)
    return path


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, photo-like test image (gradients plus texture)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([x / max(width, 1), y / max(height, 1), (x + y) / max(width + height, 1)], -1)
    texture = rng.normal(0, 0.05, (height, width, 3))
    array = np.clip((0.2 + 0.6 * base + texture) * 255, 0, 255).astype(np.uint8)
    return Image.fromarray(array, "RGB")


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    photo(96, 80, 1).save(folder / "a.png")
    photo(130, 70, 2).save(folder / "b.png")
    return folder


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    monkeypatch.setenv("DQCODEC_DEBUG", "")
    yield
