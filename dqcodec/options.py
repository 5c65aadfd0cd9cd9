"""What the command line shows before torch or any model loads: the encoder's effort levels,
the decoder's size limit and the shipped quality levels (models/zoo.json)."""

from __future__ import annotations

import json
from importlib import resources

EFFORT_LEVELS = 3  # models.encoder_search.EFFORTS holds one search per level
DEFAULT_EFFORT = 1
DEFAULT_MAX_PIXELS = 1 << 26  # 67 MP; raise with max_pixels / --max-pixels
WEIGHTS_PACKAGE = "dqcodec.weights"  # the repository's models/ folder, installed in the package


def manifest() -> dict:
    """models/zoo.json, or {} when no model is installed."""
    path = resources.files(WEIGHTS_PACKAGE) / "zoo.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def quality_levels() -> list[int]:
    return sorted(int(q) for q in manifest().get("levels", {}))


def default_quality() -> int | None:
    """The level models/zoo.json names as default; None when no model is installed."""
    value = manifest().get("default")
    return None if value is None else int(value)
