"""The shipped models: every level loads without pickle and decodes without --model.

The expected facts below are written out literally (from models/zoo.json and the model ids
CHANGELOG.md documents), so a changed manifest, weights file or calibration fails here.
"""

import json
import pickle
import struct
from importlib import resources

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dqcodec import decode, encode, load_model
from dqcodec.cli import main
from dqcodec.codec import load_codec
from dqcodec.container import DQFile
from dqcodec.options import manifest
from dqcodec.testing import photo
from dqcodec.zoo import Level, model_id, read_model_file, shipped_models

# quality: (weights file, rate_weight, rate_point, search_scale) as models/zoo.json gives them
EXPECTED_MANIFEST = {
    1: ("dq-l00015.safetensors", 0.45, None, 0.667),
    2: ("dq-l0003.safetensors", 0.4, None, 0.667),
    3: ("dq-l0006.safetensors", 0.25, None, 0.667),
    4: ("dq-vr.safetensors", None, 1, 1.0),
    5: ("dq-vr.safetensors", None, 2, 1.0),
    6: ("dq-vr.safetensors", None, 3, 1.0),
    7: ("dq-vr.safetensors", None, 4, 1.0),
    8: ("dq-vr.safetensors", None, 5, 1.0),
    9: ("dq-vr.safetensors", None, 6, 1.0),
}
# weights file: (rate points of the model, float model id = the id of format-version-1 files)
EXPECTED_WEIGHTS = {
    "dq-l00015.safetensors": (1, "7b311a3651d20913"),
    "dq-l0003.safetensors": (1, "84f1c7a494617253"),
    "dq-l0006.safetensors": (1, "f68aa6a411e53515"),
    "dq-vr.safetensors": (8, "1f2359b5d336f06d"),
}
# quality: (rate point the codec encodes at, integer-prior model id named by format-version-2 files)
EXPECTED_CODEC = {
    1: (0, "4b0a8ccb249c719f"),
    2: (0, "03c6ac50afd2935a"),
    3: (0, "8414697b44440aa3"),
    4: (1, "8307b9381ce979da"),
    5: (2, "8307b9381ce979da"),
    6: (3, "8307b9381ce979da"),
    7: (4, "8307b9381ce979da"),
    8: (5, "8307b9381ce979da"),
    9: (6, "8307b9381ce979da"),
}
WEIGHTS_DIR = resources.files("dqcodec.weights")


def test_manifest_is_the_documented_one():
    raw = manifest()
    assert raw["default"] == 5
    assert sorted(raw["levels"], key=int) == [str(q) for q in range(1, 10)]
    levels = shipped_models()
    assert sorted(levels) == list(range(1, 10))
    for quality, (weights, rate_weight, rate_point, search_scale) in EXPECTED_MANIFEST.items():
        level = levels[quality]
        assert level == Level(level.weights, rate_weight, rate_point, search_scale), quality
        assert level.weights.name == weights and level.weights.is_file(), quality


def _fail(*args, **kwargs):
    raise AssertionError("a shipped model must load without pickle")


def test_weights_are_safetensors_and_load_without_pickle(monkeypatch):
    monkeypatch.setattr(torch, "load", _fail)
    monkeypatch.setattr(pickle, "load", _fail)
    monkeypatch.setattr(pickle, "loads", _fail)
    monkeypatch.setattr(pickle, "Unpickler", _fail)
    weight_suffixes = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
    names = {p.name for p in WEIGHTS_DIR.iterdir() if p.name.endswith(weight_suffixes)}
    assert names == set(EXPECTED_WEIGHTS)
    for name, (rate_points, float_id) in EXPECTED_WEIGHTS.items():
        data = (WEIGHTS_DIR / name).read_bytes()
        (header_size,) = struct.unpack_from("<Q", data)  # safetensors: u64 length, then JSON
        header = json.loads(data[8 : 8 + header_size])
        assert header["__metadata__"]["format"] == "dqcodec", name
        model = read_model_file(WEIGHTS_DIR / name)
        assert model.config.rate_points == rate_points, name
        assert model_id(model).hex() == float_id, name


def test_levels_configure_their_codecs():
    """Each level's codec: the manifest's settings (search_scale included) and the documented
    ids."""
    for quality, (weights, rate_weight, _, search_scale) in EXPECTED_MANIFEST.items():
        codec = load_codec(quality)
        rate_point, integer_id = EXPECTED_CODEC[quality]
        assert (codec.quality, codec.rate_point, codec.rate_weight, codec.search_scale) == (
            quality,
            rate_point,
            rate_weight,
            search_scale,
        ), quality
        assert codec.float_model_id.hex() == EXPECTED_WEIGHTS[weights][1], quality
        assert codec.model_id.hex() == integer_id, quality
    assert load_model().quality == 5


@pytest.mark.parametrize("quality", sorted(EXPECTED_CODEC))
def test_every_level_round_trips_through_the_api(quality, tmp_path):
    image = photo(96, 64, quality)
    data = encode(image, quality=quality)
    dq = DQFile.from_bytes(data)
    rate_point, integer_id = EXPECTED_CODEC[quality]
    assert (dq.version, dq.quality, dq.rate_point, dq.model_id.hex()) == (
        2,
        quality,
        rate_point,
        integer_id,
    )
    decoded = decode(data)
    assert decoded.size == image.size and decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decode(data)), np.asarray(decoded))
    (tmp_path / "a.dq").write_bytes(data)
    info = CliRunner().invoke(main, ["info", str(tmp_path / "a.dq")])
    assert info.exit_code == 0, info.output
    assert "version 2 (integer prior)" in info.output
    assert f"model:      {integer_id} (quality {quality}, rate point {rate_point})" in info.output


def test_cli_decodes_with_the_level_named_in_the_file(tmp_path):
    src = tmp_path / "in.png"
    photo(80, 60).save(src)
    runner = CliRunner()
    assert runner.invoke(main, ["encode", str(src), "-o", str(tmp_path / "a.dq")]).exit_code == 0
    r = runner.invoke(main, ["decode", str(tmp_path / "a.dq"), "-o", str(tmp_path / "a.png")])
    assert r.exit_code == 0, r.output
    dq = DQFile.from_bytes((tmp_path / "a.dq").read_bytes())
    assert (dq.quality, dq.model_id.hex()) == (5, EXPECTED_CODEC[5][1])  # the default level
    with Image.open(tmp_path / "a.png") as decoded:
        assert decoded.size == (80, 60)
