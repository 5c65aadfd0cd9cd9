""".dq files of format version 2 -> images, with NumPy alone: the integer prior's passes and
the range decoder give the codes, then the codebooks, the top level's synthesis and the
image synthesis (synthesis.py) give the pixels. No torch is imported, so a decode starts in
a fraction of the time; the codes are the encoder's, bit for bit (the integer prior), and
pixels differ from a torch decode only by float rounding in the synthesis.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from functools import cached_property

import numpy as np
from PIL import Image

from dqcodec.container import DQFile
from dqcodec.entropy_models.integer_prior import (
    DEFAULT_POLICY,
    Float64Weights,
    IntegerModel,
    IntegerPasses,
    Policy,
    codes_at,
    derive,
    integer_id,
)
from dqcodec.errors import DQError
from dqcodec.image_io import to_pixels
from dqcodec.models.config import ModelConfig
from dqcodec.numpy_decoder.synthesis import Synthesis
from dqcodec.range_coding import IndexDecoder
from dqcodec.zoo import weights_id


class Decoder:
    """One model's decoder: its float32 weights (by state-dict name), config and calibration."""

    def __init__(
        self,
        config: ModelConfig,
        weights: Mapping[str, np.ndarray],
        calibration: dict,
        policy: Policy = DEFAULT_POLICY,
    ):
        self.config, self.weights = config, weights
        self.calibration, self.policy = calibration, policy
        self._integer: dict[int, IntegerModel] = {}

    @cached_property
    def model_id(self) -> bytes:
        """The id the files of this model name (Codec.model_id)."""
        return integer_id(weights_id(self.weights), self.calibration, self.policy)

    @cached_property
    def synthesis(self) -> Synthesis:
        return Synthesis(self.weights, self.config)

    def integer_model(self, point: int) -> IntegerModel:
        if point not in self._integer:
            weights = Float64Weights(self.weights)
            self._integer[point] = derive(
                weights, self.config, point, self.calibration, self.policy
            )
        return self._integer[point]

    def decode(self, data: bytes, max_pixels: int) -> Image.Image:
        dq = DQFile.from_bytes(data)
        self.check_compatible(dq)
        shape = latent_shape(dq, self.config.top_stride, max_pixels)
        alpha = alpha_plane(dq)
        indices = self.decode_indices(dq, shape)
        if index_checksum(*indices) != dq.index_crc:
            raise DQError("decoding went out of sync with the encoder (index checksum mismatch)")
        pixels = self.pixels(*indices, dq.rate_point, (dq.height, dq.width))
        return with_mode(Image.fromarray(pixels, "RGB"), dq.mode, alpha)

    def check_compatible(self, dq: DQFile) -> None:
        if dq.version == 1:
            raise DQError("files of format version 1 decode with the float prior (Codec)")
        check_model(dq, self.model_id, self.config.rate_points)

    def decode_indices(self, dq: DQFile, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Top (1, G, h, w) and bottom (1, G, 4h, 4w) indices of the file's two payloads."""
        integer = self.integer_model(dq.rate_point)
        top = _decode_level(dq.top, integer.top, integer.top_input(*shape))
        bottom = _decode_level(dq.bottom, integer.bottom, integer.condition(top))
        return top, bottom

    def pixels(
        self, top: np.ndarray, bottom: np.ndarray, point: int, size: tuple[int, int]
    ) -> np.ndarray:
        """uint8 (height, width, 3) of the decoded codes: the synthesis, tile by tile, each
        tile's pixels written into the image as soon as they are made."""
        y = self.synthesis_input(top, bottom, point)
        height, width = size
        image = np.empty((height, width, 3), dtype=np.uint8)

        def write(core: np.ndarray, row: int, col: int) -> None:
            rows, cols = min(core.shape[0], height - row), min(core.shape[1], width - col)
            if rows > 0 and cols > 0:  # else a tile of the padding alone
                image[row : row + rows, col : col + cols] = to_pixels(core[:rows, :cols])

        self.synthesis.tiled(y, write)
        return image

    def synthesis_input(self, top: np.ndarray, bottom: np.ndarray, point: int) -> np.ndarray:
        """(4h, 4w, C + N) float32: the bottom latent and the top level's features."""
        bottom_y = codes_at(self.weights["bottom.quantizer.codebooks"], bottom)[0]
        top_y = codes_at(self.weights["top.quantizer.codebooks"], top)[0]
        if self.config.rate_points > 1:  # DQModel._unscaled
            bottom_y /= np.exp(self.weights["bottom_gain"][point])
            top_y /= np.exp(self.weights["top_gain"][point])
        cond = self.synthesis.condition(top_y)
        return np.concatenate([bottom_y, cond], -1)


def check_model(dq: DQFile, model_id: bytes, rate_points: int) -> None:
    """Refuses a file of another model (id), or naming a rate point the model lacks."""
    if dq.model_id != model_id:
        raise DQError(
            f"file was encoded with model {dq.model_id.hex()} (quality {dq.quality}), "
            f"not with this one ({model_id.hex()}); pass the matching --model"
        )
    if dq.rate_point >= rate_points:
        raise DQError(
            f"corrupt .dq header: rate point {dq.rate_point}, but the model has {rate_points}"
        )


def _decode_level(payload: bytes, prior, cond: np.ndarray) -> np.ndarray:
    try:
        decoder = IndexDecoder(payload)
        return IntegerPasses(prior, cond).run(
            lambda p, groups, logits, rows, mask, table: decoder.decode(logits, table)
        )
    except ValueError as exc:
        raise DQError(f"cannot decode the .dq payload ({exc})") from None


def latent_shape(dq: DQFile, stride: int, max_pixels: int) -> tuple[int, int]:
    """The top level's latent size; refuses an image over `max_pixels` once padded."""
    shape = (-(-dq.height // stride), -(-dq.width // stride))
    padded = shape[0] * shape[1] * stride**2  # what the model really decodes
    if padded > max_pixels:
        raise DQError(
            f"image is {dq.width}x{dq.height} ({padded} pixels once padded), over "
            f"the limit of {max_pixels} pixels (raise it with --max-pixels)"
        )
    return shape


def index_checksum(*indices) -> int:
    """CRC-32 of the indices (arrays or CPU tensors) as int16, in order: the file's check."""
    crc = 0
    for idx in indices:
        crc = zlib.crc32(np.asarray(idx).astype(np.int16).tobytes(), crc)
    return crc


def alpha_plane(dq: DQFile) -> Image.Image | None:
    """The lossless alpha plane, inflated no further than the image can hold (zlib bombs)."""
    if dq.mode not in ("RGBA", "LA"):
        return None
    size = dq.width * dq.height
    inflater = zlib.decompressobj()
    try:
        plane = inflater.decompress(dq.alpha, size + 1)
    except zlib.error:
        raise DQError("corrupt alpha plane in .dq file") from None
    if len(plane) > size:
        raise DQError("corrupt alpha plane in .dq file (wrong size)")
    if not inflater.eof or inflater.unused_data:
        raise DQError("corrupt alpha plane in .dq file")
    if len(plane) != size:
        raise DQError("corrupt alpha plane in .dq file (wrong size)")
    return Image.frombytes("L", (dq.width, dq.height), plane)


def with_mode(rgb: Image.Image, mode: str, alpha: Image.Image | None) -> Image.Image:
    """The decoded RGB image in the mode the file was encoded from, with its alpha plane."""
    image = rgb.convert("L") if mode in ("L", "LA") else rgb
    if alpha is not None:
        image = image.convert("RGBA" if mode == "RGBA" else "LA")
        image.putalpha(alpha)
    return image
