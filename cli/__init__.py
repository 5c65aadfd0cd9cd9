"""The dqcodec command line (installed as dqcodec.cli)."""

from .main import main

__all__ = ["main"]
