"""Which decoder decodes a .dq file: files of format version 2 (every file dqcodec writes)
decode with NumPy alone (numpy_decoder), files of format version 1 with the float prior of
the torch model (codec.Codec), which loads torch only then."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from dqcodec import zoo
from dqcodec.container import DQFile
from dqcodec.errors import DQError
from dqcodec.numpy_decoder.decoder import Decoder


def decoder_for_file(data: bytes, path: str | Path | None = None):
    """The decoder of `data` (its .decode(data, max_pixels) makes the image): with the given
    model file, else the shipped model the file names."""
    dq = DQFile.from_bytes(data)
    if path is None:
        levels = zoo.shipped_models()
        if dq.quality not in levels:
            raise DQError(
                f"file was encoded with a model that is not shipped (id {dq.model_id.hex()}); "
                "pass it with --model"
            )
        path = levels[dq.quality].weights
    decoder = load_decoder(str(path)) if dq.version > 1 else None
    if decoder is None:
        from dqcodec.codec import codec_for_file

        return codec_for_file(data, path)
    return decoder


@lru_cache(maxsize=4)
def load_decoder(path: str) -> Decoder | None:
    """The NumPy decoder of a model file; None for a file without a stored calibration (the
    torch Codec calibrates it on synthesized codes)."""
    calibration = zoo.read_calibration(Path(path))
    if calibration is None:
        return None
    config, weights = zoo.read_weights(Path(path))
    return Decoder(config, weights, calibration)
