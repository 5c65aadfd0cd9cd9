"""A loaded model turned into an image codec: pixels <-> .dq bytes."""

from __future__ import annotations

import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import torch
from PIL import Image

from dqcodec import zoo
from dqcodec.container import VERSION, DQFile
from dqcodec.entropy_models.calibration import calibrate_synthesized
from dqcodec.entropy_models.integer_prior import (
    DEFAULT_POLICY,
    IntegerModel,
    Policy,
    integer_id,
)
from dqcodec.errors import DQError
from dqcodec.image_io import open_image, split_alpha, to_image, to_tensor
from dqcodec.models.dq import DQModel, pad_to_stride
from dqcodec.models.encoder_search import DEFAULT_EFFORT, encoder_features
from dqcodec.numpy_decoder.decoder import (
    Decoder,
    alpha_plane,
    check_model,
    index_checksum,
    latent_shape,
    with_mode,
)
from dqcodec.options import DEFAULT_MAX_PIXELS
from dqcodec.runtime import torch_threads

# Files of format version 1 were coded with the float prior, whose results depend on the
# thread count: they decode with the thread count that encoded them.
FLOAT_PRIOR_THREADS = 2


def fixed_threads(count: int = FLOAT_PRIOR_THREADS):
    return torch_threads(count)


@dataclass
class EncodeResult:
    data: bytes
    # cross-entropy of the indices under the prior (None for codecs without one: evaluation)
    information_bits: float | None = None


class Codec:
    def __init__(
        self,
        model: DQModel,
        quality: int = 0,
        rate_weight: float | None = None,
        rate_point: int | None = None,
        search_scale: float = 1.0,
        calibration: dict | None = None,
        policy: Policy | None = DEFAULT_POLICY,
    ):
        """rate_point: which rate point of a variable-rate model encodes (default the
        highest); rate_weight: the assignment strength (default the trained one);
        search_scale: multiplies the step size of the encoder search (effort > 0);
        calibration: the activation ranges the integer prior is derived from (default: stored
        with the model file; a model without them is calibrated on synthesized codes, which
        only this machine is sure to reproduce); policy: the integer prior's bit widths, or
        None to code with the float prior (format version 1, for comparisons: such files
        decode only where the same floating-point kernels run)."""
        points = model.config.rate_points
        if rate_point is None:
            rate_point = points - 1
        if not 0 <= rate_point < points:
            raise DQError(
                f"rate point {rate_point} does not exist: the model has {points} (0-{points - 1})"
            )
        if not search_scale > 0:
            raise DQError(f"search scale {search_scale} must be positive")
        self.float_model_id = zoo.model_id(model)  # what files of format version 1 name
        self._calibration = calibration
        self.policy = policy
        # a Codec never trains its model: frozen weights let the encoder search compute
        # gradients to the features alone (layers.FrozenGDN)
        self.model = model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.quality = quality
        self.rate_weight = rate_weight
        self.rate_point = rate_point
        self.search_scale = search_scale
        self.stride = model.config.top_stride

    @cached_property
    def calibration(self) -> dict:
        return (
            self._calibration
            if self._calibration is not None
            else calibrate_synthesized(self.model)
        )

    @cached_property
    def model_id(self) -> bytes:
        """The id new files name: the weights with the integer prior derived from them."""
        if self.policy is None:
            return self.float_model_id
        return integer_id(self.float_model_id, self.calibration, self.policy)

    def integer_model(self, point: int) -> IntegerModel:
        return self.decoder.integer_model(point)

    @property
    def setting(self) -> str:
        """How this codec is named in tables: its quality level, or the model file's rate point."""
        if self.quality:
            return f"q{self.quality}"
        return f"p{self.rate_point}" if self.model.config.rate_points > 1 else "model"

    @torch.no_grad()  # not inference_mode: effort > 0 runs gradient steps inside
    def encode_image(self, image: Image.Image, effort: int = DEFAULT_EFFORT) -> EncodeResult:
        """effort: 0 codes the analysis transform's features; 1 and 2 first refine them for
        this image (slower encoding, same decoding; see models/encoder_search.py)."""
        rgb, alpha, mode = split_alpha(image)
        x = pad_to_stride(to_tensor(rgb), self.stride)
        features = encoder_features(
            self.model,
            x,
            self.rate_point,
            effort,
            self.rate_weight,
            size=(rgb.height, rgb.width),
            step_scale=self.search_scale,
        )
        if self.policy is None:  # format version 1: the float prior, with its threads
            integer = None
            with fixed_threads():
                out = self.model.compress(x, self.rate_weight, self.rate_point, features=features)
        else:
            integer = self.integer_model(self.rate_point)
            out = self.model.compress(
                x, self.rate_weight, self.rate_point, features=features, integer=integer
            )
        top, bottom = out["strings"]
        alpha_bytes = zlib.compress(alpha.tobytes(), 9) if alpha is not None else b""
        crc = index_checksum(out["indices"]["top"], out["indices"]["bottom"])
        dq = DQFile(
            mode,
            self.quality,
            self.rate_point,
            self.model_id,
            rgb.width,
            rgb.height,
            top,
            bottom,
            alpha_bytes,
            crc,
            version=1 if integer is None else VERSION,
        )
        return EncodeResult(dq.to_bytes(), out["information_bits"])

    def encode(self, image: Image.Image | str | Path, effort: int = DEFAULT_EFFORT) -> bytes:
        if not isinstance(image, Image.Image):
            image = open_image(image)
        return self.encode_image(image, effort).data

    @cached_property
    def decoder(self) -> Decoder:
        """The NumPy decoder of this codec's files (format version 2)."""
        weights = {k: v.numpy() for k, v in self.model.state_dict().items()}
        return Decoder(self.model.config, weights, self.calibration, self.policy)

    @torch.inference_mode()
    def decode(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """The torch model's decode: the integer prior's codes (as the NumPy decoder makes
        them), then the torch synthesis, faster than NumPy's once torch is loaded. Files of
        format version 1 decode with the float prior, with the threads they need."""
        dq = DQFile.from_bytes(data)
        if dq.version > 1 and self.policy is None:
            raise DQError("this codec has no integer prior; files of format version 2 need one")
        model_id = self.float_model_id if dq.version == 1 else self.model_id
        check_model(dq, model_id, self.model.config.rate_points)
        shape = latent_shape(dq, self.stride, max_pixels)
        alpha = alpha_plane(dq)
        # the synthesis writes each tile's 8-bit pixels straight into the image: no
        # full-size float image is held (docs/performance.md, "Memory of large images")
        rgb = TileWriter(dq.width, dq.height)
        integer = None if dq.version == 1 else self.integer_model(dq.rate_point)
        try:
            with fixed_threads() if integer is None else nullcontext():
                out = self.model.decompress(
                    [dq.top, dq.bottom], shape, dq.rate_point, integer=integer, write=rgb
                )
        except (ValueError, RuntimeError) as exc:
            raise DQError(f"cannot decode the .dq payload ({exc})") from None
        if index_checksum(out["indices"]["top"], out["indices"]["bottom"]) != dq.index_crc:
            raise DQError("decoding went out of sync with the encoder (index checksum mismatch)")
        return with_mode(rgb.image, dq.mode, alpha)


class TileWriter:
    """The `write` of DQModel.decompress for Codec.decode: each synthesis tile (1, 3, h, w),
    cropped to the image, becomes 8-bit pixels (image_io.to_image) pasted into one RGB image.
    The image is allocated with the first tile, once the payload has decoded."""

    def __init__(self, width: int, height: int):
        self.size = (width, height)
        self._image: Image.Image | None = None

    @property
    def image(self) -> Image.Image:
        if self._image is None:
            self._image = Image.new("RGB", self.size)
        return self._image

    def __call__(self, core: torch.Tensor, top: int, left: int) -> None:
        width, height = self.size
        rows = min(core.shape[-2], height - top)
        cols = min(core.shape[-1], width - left)
        if rows <= 0 or cols <= 0:  # a tile of the padding alone
            return
        self.image.paste(to_image(core[:, :, :rows, :cols]), (left, top))


@lru_cache(maxsize=8)
def _load(quality: int | None, path: str | None, rate_point: int | None = None) -> Codec:
    if path is not None:
        return Codec(
            _read_weights(Path(path)),
            rate_point=rate_point,
            calibration=_read_calibration(Path(path)),
        )
    levels = zoo.shipped_models()
    q = zoo.default_quality() if quality is None else quality
    if q not in levels:
        raise DQError(
            f"no model for quality {q} (available: {', '.join(map(str, levels)) or 'none'})"
        )
    level = levels[q]
    return Codec(
        _read_weights(level.weights),
        q,
        level.rate_weight,
        level.rate_point,
        level.search_scale,
        _read_calibration(level.weights),
    )


@lru_cache(maxsize=4)
def _read_weights(path: Path):
    """Quality levels (or rate points of one model file) that share a weights file share one
    loaded model."""
    return zoo.read_model_file(path)


@lru_cache(maxsize=4)
def _read_calibration(path: Path) -> dict | None:
    return zoo.read_calibration(path)


def load_codec(
    quality: int | None = None, path: str | Path | None = None, rate_point: int | None = None
) -> Codec:
    """A shipped quality level, or a model file (at one of its rate points)."""
    return _load(quality, str(path) if path is not None else None, rate_point)


def codec_for_file(data: bytes, path: str | Path | None = None) -> Codec:
    """The codec that can decode `data`: the given model, else the shipped one it names."""
    if path is not None:
        return load_codec(path=path)
    dq = DQFile.from_bytes(data)
    zoo.shipped_level(dq.quality, dq.model_id)  # refuses a model that is not shipped
    return load_codec(dq.quality)
