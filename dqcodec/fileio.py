"""Safe output: write to a temporary file beside the target, then rename into place."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from dqcodec.errors import DQError


def check_output(src: Path, dst: Path, force: bool) -> None:
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise DQError(f"refusing to write the output over the input: {dst}")
    if dst.exists() and not force:
        raise DQError(f"{dst} exists; pass --force to overwrite it")
    if dst.exists() and dst.is_dir():
        raise DQError(f"{dst} is a directory")


def write_atomic(dst: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path), then rename tmp over dst; nothing is left behind on failure."""
    dst = Path(dst)
    if not dst.parent.is_dir():
        raise DQError(f"output folder does not exist: {dst.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp makes 0600 (and some writers, e.g. safetensors, recreate the file):
        # outputs get the usual mode
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(dst: Path, data: bytes) -> None:
    write_atomic(dst, lambda tmp: tmp.write_bytes(data))
