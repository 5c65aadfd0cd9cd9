"""The dqcodec command line (installed as dqcodec.cli)."""

from dqcodec.cli.main import main

__all__ = ["main"]
