"""dqcodec: a learned image codec built on Depthwise Quantization."""

import warnings

with warnings.catch_warnings():  # compressai uses torch.jit.script, deprecated in torch 2.14
    warnings.simplefilter("ignore", FutureWarning)
    import compressai  # noqa: F401

from .api import decode, encode, load_model
from .errors import DQError

__version__ = "0.1.0"
__all__ = ["encode", "decode", "load_model", "DQError", "__version__"]
