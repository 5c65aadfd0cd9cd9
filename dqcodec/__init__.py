"""dqcodec: a learned image codec built on Depthwise Quantization.

Importing the package loads neither torch nor the models: `encode`, `decode` and
`load_model` load them on first use."""

from dqcodec.errors import DQError
from dqcodec.pillow_plugin import register as _register_pillow_plugin

_register_pillow_plugin()  # Image.open("x.dq") and image.save("x.dq") work after import dqcodec

__version__ = "0.2.0"  # the one place the version is written (pyproject reads it)
__all__ = ["encode", "decode", "load_model", "DQError", "__version__"]


def __getattr__(name: str):
    if name in ("encode", "decode", "load_model"):
        from dqcodec import api

        return getattr(api, name)
    raise AttributeError(f"module 'dqcodec' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


del _register_pillow_plugin
