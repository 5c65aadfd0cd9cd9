"""Shipped models: safetensors weights (no pickle) with the config in the metadata.

Reading is NumPy (`read_weights`), so the decoder loads a model without torch; torch loads
only where a DQModel is built (`read_model_file`) or saved (`save_model`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError, safe_open

from dqcodec.errors import DQError
from dqcodec.models.config import ModelConfig
from dqcodec.options import WEIGHTS_PACKAGE, manifest
from dqcodec.options import default_quality as manifest_default

if TYPE_CHECKING:
    import torch

    from dqcodec.models.dq import DQModel


class ModelError(DQError):
    pass


@dataclass(frozen=True)
class Level:
    """A quality level: a weights file and the strength of rate-aware code assignment.

    Levels may share weights: the decoder does not depend on the assignment strength."""

    weights: Path
    rate_weight: float | None  # None: the strength the model was trained with
    rate_point: int | None = None  # of a variable-rate model; None: its highest
    search_scale: float = (
        1.0  # multiplies the encoder search's step size (models/encoder_search.py)
    )


def shipped_models() -> dict[int, Level]:
    """Quality level -> Level, from models/zoo.json."""
    folder = resources.files(WEIGHTS_PACKAGE)
    levels = manifest().get("levels", {})
    return {
        int(q): Level(
            Path(str(folder / entry["weights"])),
            entry.get("rate_weight"),
            entry.get("rate_point"),
            entry.get("search_scale", 1.0),
        )
        for q, entry in sorted(levels.items(), key=lambda kv: int(kv[0]))
    }


def shipped_level(quality: int, model_id: bytes) -> Level:
    """The shipped level a file names by its quality; refuses a file of a model not shipped."""
    levels = shipped_models()
    if quality not in levels:
        raise ModelError(
            f"file was encoded with a model that is not shipped (id {model_id.hex()}); "
            "pass it with --model"
        )
    return levels[quality]


def default_quality() -> int:
    """The level models/zoo.json names as default (the one its weights were trained for)."""
    quality = manifest_default()
    if quality is None:
        raise ModelError("no trained model is installed (models/zoo.json is missing)")
    return quality


def weights_id(weights: Mapping[str, np.ndarray]) -> bytes:
    """8 bytes identifying the weights: SHA-256 over every tensor in float32, in name order."""
    digest = hashlib.sha256()
    for name, value in sorted(weights.items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value, dtype=np.float32).tobytes())
    return digest.digest()[:8]


def model_id(model: DQModel) -> bytes:
    """weights_id of a model's state dict."""
    return weights_id({k: v.detach().float().numpy() for k, v in model.state_dict().items()})


PRECISIONS = ("fp32", "fp16", "int8")
SCALE_SUFFIX = ".int8_scale"


def _quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per slice of dim 0 (a convolution's output channels, a
    transposed convolution's input channels)."""
    import torch

    flat = w.detach().float().reshape(w.shape[0], -1)
    scale = (flat.abs().amax(1) / 127.0).clamp_min(1e-12)
    q = torch.round(flat / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(w.shape), scale.half()


def _stored_tensors(model: DQModel, precision: str) -> dict[str, torch.Tensor]:
    state = {}
    for name, value in model.state_dict().items():
        if not value.is_floating_point() or precision == "fp32":
            state[name] = value
        elif precision == "int8" and value.dim() == 4:  # conv weights; GDN, codebooks stay fp16
            state[name], state[name + SCALE_SUFFIX] = _quantize_int8(value)
        else:
            state[name] = value.half()
    return {k: v.contiguous() for k, v in state.items()}


def _float_state(stored: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Undo `_stored_tensors`: every weight back in float32, exactly the same on every
    machine (an int8 weight times its float32 scale is one correctly rounded product)."""
    state = {}
    for name, value in stored.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        if value.dtype == np.int8:
            scale = stored[name + SCALE_SUFFIX].astype(np.float32)
            flat = value.reshape(value.shape[0], -1).astype(np.float32) * scale[:, None]
            state[name] = flat.reshape(value.shape)
        elif np.issubdtype(value.dtype, np.floating):
            state[name] = value.astype(np.float32)
        else:
            state[name] = value
    return state


def save_model(
    model: DQModel, path: Path, precision: str = "fp16", calibration: dict | None = None
) -> None:
    """Weights only; fp16 and int8 (per-channel, convolution weights only) are cast back to
    fp32 on load. The integer prior's calibration goes into the metadata (default: calibrated
    on synthesized codes now), so every machine derives the same integer prior."""
    from safetensors.torch import save_file

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    if calibration is None:
        from dqcodec.entropy_models.calibration import calibrate_synthesized

        calibration = calibrate_synthesized(model)
    meta = {
        "format": "dqcodec",
        "config": model.config.to_json(),
        "precision": precision,
        "calibration": json.dumps(calibration, sort_keys=True),
    }
    save_file(_stored_tensors(model, precision), str(path), metadata=meta)


CALIBRATION_SUFFIX = ".calibration.json"


def calibration_path(weights: Path) -> Path:
    """Where a model file's calibration lives when its metadata has none (the shipped models)."""
    return Path(weights).with_suffix(CALIBRATION_SUFFIX)


def read_calibration(path: Path) -> dict | None:
    """The integer prior's calibration of a model file: from its metadata, else from the
    file beside it; None when it has neither."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="np") as f:
            text = (f.metadata() or {}).get("calibration")
        if text is None and calibration_path(path).is_file():
            text = calibration_path(path).read_text()
        calibration = None if text is None else json.loads(text)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable calibration ({exc})") from None
    if calibration is not None and not isinstance(calibration.get("points"), dict):
        raise ModelError(f"{path}: calibration has no rate points")
    return calibration


def read_weights(path: Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """A safetensors model file's config and float32 weights (by state-dict name); anything
    else (a pickle, say) is refused unread."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            stored = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path} is not a safetensors model file ({exc})") from None
    if meta.get("format") != "dqcodec" or "config" not in meta:
        raise ModelError(f"{path} is a safetensors file but not a dqcodec model")
    try:
        return ModelConfig.from_json(meta["config"]), _float_state(stored)
    except (TypeError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: weights do not match their config ({exc})") from None


def read_model_file(path: Path) -> DQModel:
    """The DQModel of a safetensors model file (see read_weights)."""
    import torch

    from dqcodec.models.dq import DQModel

    config, weights = read_weights(path)
    try:
        model = DQModel(config)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: weights do not match their config ({exc})") from None
    model.eval()
    return model
