"""The .dq container: a fixed little-endian header followed by the payload sections.

See docs/format.md for the specification.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from dqcodec.errors import DQError

MAGIC = b"\x89DQC"
# 2: the integer prior makes every probability (files decode on any machine);
# 1: the float prior (decodes only where the encoder's floating-point kernels run)
VERSION = 2
READABLE_VERSIONS = (1, 2)
MODES = ("RGB", "L", "RGBA", "LA")
# after the magic: version, mode, quality, rate point, model id, width, height,
# top/bottom/alpha payload lengths, CRC32 of the decoded indices; then a CRC32 of
# these fields and the payload
_FIELDS = struct.Struct("<BBBB8sIIIIII")
_CRC = struct.Struct("<I")
HEADER_SIZE = len(MAGIC) + _FIELDS.size + _CRC.size


class FormatError(DQError):
    pass


@dataclass(frozen=True)
class DQFile:
    mode: str
    quality: int  # 0 when encoded with a model outside the zoo
    rate_point: int  # which rate point of a variable-rate model; 0 for single-rate models
    model_id: bytes
    width: int
    height: int
    top: bytes
    bottom: bytes
    alpha: bytes
    index_crc: int
    version: int = VERSION

    def to_bytes(self) -> bytes:
        fields = _FIELDS.pack(
            self.version,
            MODES.index(self.mode),
            self.quality,
            self.rate_point,
            self.model_id,
            self.width,
            self.height,
            len(self.top),
            len(self.bottom),
            len(self.alpha),
            self.index_crc,
        )
        payload = self.top + self.bottom + self.alpha
        return MAGIC + fields + _CRC.pack(zlib.crc32(fields + payload)) + payload

    @classmethod
    def from_bytes(cls, data: bytes) -> DQFile:
        if len(data) < 4 or data[:4] != MAGIC:
            raise FormatError("not a .dq file (bad magic bytes)")
        if len(data) < HEADER_SIZE:
            raise FormatError("truncated .dq file (incomplete header)")
        fields = data[len(MAGIC) : HEADER_SIZE - _CRC.size]
        (
            version,
            mode,
            quality,
            rate_point,
            model_id,
            width,
            height,
            n_top,
            n_bottom,
            n_alpha,
            index_crc,
        ) = _FIELDS.unpack(fields)
        (crc,) = _CRC.unpack_from(data, HEADER_SIZE - _CRC.size)
        if version not in READABLE_VERSIONS:
            raise FormatError(
                f"unsupported .dq format version {version} (this build reads "
                f"{', '.join(map(str, READABLE_VERSIONS))})"
            )
        expected = HEADER_SIZE + n_top + n_bottom + n_alpha
        if len(data) != expected:
            kind = "truncated" if len(data) < expected else "trailing data after"
            raise FormatError(f"{kind} .dq payload ({len(data)} bytes, header says {expected})")
        if zlib.crc32(fields + data[HEADER_SIZE:]) != crc:
            raise FormatError("corrupt .dq file (CRC32 mismatch)")
        if mode >= len(MODES) or width == 0 or height == 0:
            raise FormatError("corrupt .dq header (bad mode or size)")
        if n_alpha and MODES[mode] in ("RGB", "L"):
            raise FormatError(f"corrupt .dq header (alpha data in a {MODES[mode]} file)")
        top_end = HEADER_SIZE + n_top
        bottom_end = top_end + n_bottom
        return cls(
            MODES[mode],
            quality,
            rate_point,
            model_id,
            width,
            height,
            data[HEADER_SIZE:top_end],
            data[top_end:bottom_end],
            data[bottom_end:],
            index_crc,
            version,
        )
