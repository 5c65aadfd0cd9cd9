"""The NumPy decoder transforms against DQModel's torch ones, on the shipped models.

Measured max |diff| on random latents, one thread: 1.3e-6 (conditioning features, values up
to ~1.6) and 1.0e-6 (image, [0, 1] scale); tiled against untiled NumPy: 0. TOLERANCE leaves
a 15x margin for other BLAS kernels; dropping one tap of one transposed convolution is off
by >= 0.1, and erf with one coefficient off by 1e-3 by 3e-4.
"""

import math
import subprocess
import sys
import threading
from importlib import resources

import numpy as np
import pytest
import torch

from dqcodec.models.config import ModelConfig
from dqcodec.models.dq import DQModel
from dqcodec.numpy_decoder import synthesis as synthesis_module
from dqcodec.numpy_decoder.synthesis import Synthesis, erf
from dqcodec.zoo import read_model_file

TOLERANCE = 2e-5


def numpy_side(model: DQModel) -> Synthesis:
    return Synthesis({k: v.float().numpy() for k, v in model.state_dict().items()}, model.config)


@pytest.fixture(scope="module", params=["dq-vr", "dq-l0003"])  # float16 and int8 weights
def models(request):
    model = read_model_file(resources.files("dqcodec.weights") / f"{request.param}.safetensors")
    return model, numpy_side(model)


def latent(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((height, width, channels), np.float32)


def torch_apply(transform, x: np.ndarray) -> np.ndarray:
    """A channels-first torch transform on a channels-last array."""
    with torch.inference_mode():
        out = transform(torch.from_numpy(x).permute(2, 0, 1)[None])
    return out[0].permute(1, 2, 0).numpy()


def bottom_latent(model: DQModel, synthesis: Synthesis, height: int, width: int) -> np.ndarray:
    """A latent of the synthesis' shape: random bottom-level values beside real conditioning
    features (of a random top latent, so height and width are multiples of 4)."""
    cond = synthesis.condition(latent(height // 4, width // 4, model.config.top.channels, 1))
    return np.concatenate([latent(height, width, model.config.bottom.channels), cond], -1)


def test_condition(models):
    model, synthesis = models
    top = latent(5, 7, model.config.top.channels)
    cond = synthesis.condition(top)
    assert cond.shape == (20, 28, model.config.width) and cond.dtype == np.float32
    assert np.abs(cond - torch_apply(model.top_s, top)).max() < TOLERANCE


def test_synthesise(models):
    model, synthesis = models
    y = bottom_latent(model, synthesis, 8, 12)
    image = synthesis.synthesise(y)
    assert image.shape == (128, 192, 3) and image.dtype == np.float32
    assert np.abs(image - torch_apply(model.synthesise, y)).max() < TOLERANCE


def test_tiled(models):
    model, synthesis = models
    y = bottom_latent(model, synthesis, 24, 40)  # 2 x 3 tiles of at most 16 latents
    image = np.full((24 * 16, 40 * 16, 3), np.nan, np.float32)
    writes = []

    def write(core, top, left):
        assert np.isnan(image[top : top + core.shape[0], left : left + core.shape[1]]).all()
        image[top : top + core.shape[0], left : left + core.shape[1]] = core
        writes.append((top, left))

    synthesis.tiled(y, write, tile=16)
    assert len(writes) == 6 and not np.isnan(image).any()
    assert np.abs(image - synthesis.synthesise(y)).max() < TOLERANCE
    assert np.abs(image - torch_apply(model.synthesise, y)).max() < TOLERANCE


def test_tiles_side_by_side_give_the_tiles_in_turn_exactly(models, monkeypatch):
    model, synthesis = models
    y = bottom_latent(model, synthesis, 24, 40)

    def tiled() -> tuple[np.ndarray, set]:
        image, threads = np.zeros((24 * 16, 40 * 16, 3), np.float32), set()

        def write(core, top, left):
            image[top : top + core.shape[0], left : left + core.shape[1]] += core
            threads.add(threading.current_thread().name)

        synthesis.tiled(y, write, tile=16)
        return image, threads

    in_turn, _ = tiled()
    monkeypatch.setattr(synthesis_module, "tile_workers", lambda: 2)
    side_by_side, threads = tiled()
    assert np.array_equal(side_by_side, in_turn)
    assert any(name.startswith("dqcodec") for name in threads)


def test_tiled_one_tile_goes_whole(models):
    model, synthesis = models
    y = bottom_latent(model, synthesis, 4, 8)
    writes = []
    synthesis.tiled(y, lambda core, top, left: writes.append((core.copy(), top, left)))
    [(core, top, left)] = writes
    assert (top, left) == (0, 0)
    assert np.array_equal(core, synthesis.synthesise(y))


def test_linear_skip():
    torch.manual_seed(0)
    model = DQModel(ModelConfig(linear_skip=True)).eval()
    y = latent(3, 5, model.config.bottom.channels + model.config.width)
    image = numpy_side(model).synthesise(y)
    assert np.abs(image - torch_apply(model.synthesise, y)).max() < TOLERANCE


def test_erf():
    x = np.linspace(-6, 6, 24001, dtype=np.float32)
    exact = np.array([math.erf(v) for v in x.tolist()])
    assert erf(x).dtype == np.float32
    assert np.abs(erf(x) - exact).max() < 2e-7


def test_imports_no_torch():
    code = "import sys, dqcodec.numpy_decoder.synthesis; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
