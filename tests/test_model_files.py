"""Model files: the stored precisions load back to the weights they promise, without pickle."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dqcodec.codec import Codec
from dqcodec.errors import DQError
from dqcodec.testing import photo, tiny_model
from dqcodec.zoo import model_id, read_model_file, save_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(3)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_stored_weights_are_close_to_the_originals(model, tmp_path, precision):
    path = tmp_path / f"{precision}.safetensors"
    save_model(model, path, precision)
    loaded = read_model_file(path).state_dict()
    for name, original in model.state_dict().items():
        original = original.float()
        if precision == "int8" and original.dim() == 4:
            step = original.reshape(original.shape[0], -1).abs().amax(1) / 127
            bound = step.view(-1, 1, 1, 1) * 0.5 + 1e-3 * original.abs()  # + fp16 scale error
        else:
            bound = {"fp32": 0.0, "fp16": 1e-3, "int8": 1e-3}[precision] * original.abs()
        assert torch.all((loaded[name].float() - original).abs() <= bound + 1e-7), name


def test_int8_stores_convolutions_as_int8_and_is_smaller(model, tmp_path):
    save_model(model, tmp_path / "h.safetensors", "fp16")
    save_model(model, tmp_path / "q.safetensors", "int8")
    stored = load_file(str(tmp_path / "q.safetensors"))
    assert stored["g_a.0.weight"].dtype == torch.int8
    assert stored["bottom.quantizer.codebooks"].dtype == torch.float16  # codes keep their precision
    assert (tmp_path / "q.safetensors").stat().st_size < (tmp_path / "h.safetensors").stat().st_size


def test_int8_model_round_trips_and_has_its_own_identity(model, tmp_path):
    save_model(model, tmp_path / "q.safetensors", "int8")
    first, second = (
        read_model_file(tmp_path / "q.safetensors"),
        read_model_file(tmp_path / "q.safetensors"),
    )
    assert model_id(first) == model_id(second) != model_id(model)
    image = photo(72, 56, 5)
    data = Codec(first).encode(image)
    assert Codec(second).decode(data).tobytes() == Codec(first).decode(data).tobytes()


def test_int8_weight_without_its_scale_is_refused(model, tmp_path):
    path = tmp_path / "q.safetensors"
    save_model(model, path, "int8")
    stored = load_file(str(path))
    del stored["g_a.0.weight.int8_scale"]
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file(stored, str(path), metadata=meta)
    with pytest.raises(DQError, match="do not match"):
        read_model_file(path)


def test_unknown_precision_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="precision"):
        save_model(model, tmp_path / "x.safetensors", "int4")
