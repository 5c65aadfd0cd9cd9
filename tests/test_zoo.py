"""The shipped models: every level loads without pickle and decodes without --model."""

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dqcodec import decode, encode, load_model
from dqcodec.cli import main
from dqcodec.codec import load_codec
from dqcodec.container import DQFile
from dqcodec.testing import photo
from dqcodec.zoo import shipped_models

LEVELS = shipped_models()
_MANIFEST_FILE = resources.files("dqcodec.weights") / "zoo.json"
MANIFEST = json.loads(_MANIFEST_FILE.read_text()) if _MANIFEST_FILE.is_file() else {}
pytestmark = pytest.mark.skipif(not LEVELS, reason="no model shipped in models/")


def test_manifest_lists_existing_weights():
    assert set(map(int, MANIFEST["levels"])) == set(LEVELS)
    for level in LEVELS.values():
        assert level.weights.suffix == ".safetensors" and level.weights.is_file()


def test_levels_pass_their_search_scale_to_the_codec():
    for quality, level in LEVELS.items():
        assert level.search_scale == MANIFEST["levels"][str(quality)].get("search_scale", 1.0) > 0
        assert load_codec(quality).search_scale == level.search_scale


@pytest.mark.parametrize("quality", sorted(LEVELS))
def test_every_level_round_trips_through_the_api(quality):
    image = photo(96, 64, quality)
    data = encode(image, quality=quality)
    assert DQFile.from_bytes(data).quality == quality
    decoded = decode(data)
    assert decoded.size == image.size
    assert np.array_equal(np.asarray(decode(data)), np.asarray(decoded))


def test_levels_trade_rate_for_quality():
    sample = Path(__file__).resolve().parents[1] / "samples" / "bsds500-test_100007.jpg"
    image = Image.open(sample).convert("RGB").crop((0, 0, 256, 192))
    sizes = [len(encode(image, quality=q)) for q in sorted(LEVELS)]
    assert sizes == sorted(sizes)


def test_cli_decodes_with_the_level_named_in_the_file(tmp_path):
    src = tmp_path / "in.png"
    photo(80, 60).save(src)
    runner = CliRunner()
    assert runner.invoke(main, ["encode", str(src), "-o", str(tmp_path / "a.dq")]).exit_code == 0
    r = runner.invoke(main, ["decode", str(tmp_path / "a.dq"), "-o", str(tmp_path / "a.png")])
    assert r.exit_code == 0, r.output
    assert load_model().quality == DQFile.from_bytes((tmp_path / "a.dq").read_bytes()).quality
