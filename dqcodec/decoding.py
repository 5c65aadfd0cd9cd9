"""Which decoder decodes a .dq file.

Files of format version 2 (every file dqcodec writes) up to NUMPY_MAX_PIXELS decode with NumPy
alone (numpy_decoder): no torch to import, which is most of a small image's time. Larger ones
decode with the torch model (codec.Codec), whose synthesis is about twice as fast as NumPy's:
from about 4 megapixels on, that gains more than importing torch costs (docs/performance.md).
Files of format version 1 need the float prior, which is torch's."""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

from dqcodec import zoo
from dqcodec.container import DQFile
from dqcodec.numpy_decoder.decoder import Decoder

NUMPY_MAX_PIXELS = 1 << 22  # padded to the model's stride of 64


def decoder_for_file(data: bytes, path: str | Path | None = None):
    """The decoder of `data` (its .decode(data, max_pixels) makes the image): with the given
    model file, else the shipped model the file names."""
    dq = DQFile.from_bytes(data)
    if numpy_decodes(dq):
        weights = path if path is not None else zoo.shipped_level(dq.quality, dq.model_id).weights
        decoder = load_decoder(str(weights))
        if decoder is not None:
            return decoder
    from dqcodec.codec import codec_for_file

    return codec_for_file(data, path)


def numpy_decodes(dq: DQFile) -> bool:
    """Whether the NumPy decoder is the faster: a file of format version 2, small enough, in a
    program that has not loaded torch already."""
    padded = -(-dq.height // 64) * -(-dq.width // 64) * 64 * 64
    return dq.version > 1 and padded <= NUMPY_MAX_PIXELS and "torch" not in sys.modules


@lru_cache(maxsize=4)
def load_decoder(path: str) -> Decoder | None:
    """The NumPy decoder of a model file; None for a file without a stored calibration (the
    torch Codec calibrates it on synthesized codes)."""
    calibration = zoo.read_calibration(Path(path))
    if calibration is None:
        return None
    config, weights = zoo.read_weights(Path(path))
    return Decoder(config, weights, calibration)
