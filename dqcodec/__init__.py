"""dqcodec: a learned image codec built on Depthwise Quantization.

Importing the package loads neither torch nor the models: `encode`, `decode` and
`load_model` load them on first use."""

import warnings

# compressai's layers use torch.jit.script, which torch 2.14 deprecates
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")

from .errors import DQError  # noqa: E402
from .pillow_plugin import register as _register_pillow_plugin  # noqa: E402

_register_pillow_plugin()  # Image.open("x.dq") and image.save("x.dq") work after import dqcodec

__version__ = "0.1.0"
__all__ = ["encode", "decode", "load_model", "DQError", "__version__"]


def __getattr__(name: str):
    if name in ("encode", "decode", "load_model"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'dqcodec' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


del _register_pillow_plugin
