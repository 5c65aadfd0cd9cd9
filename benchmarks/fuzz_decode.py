"""Fuzz the .dq decoder with hostile files.

Builds a few real bitstreams (several sizes; RGB, L, RGBA, LA), then feeds `Codec.decode`
mutated versions of them, in-process, one at a time: truncated, extended, bit-flipped and
overwritten files, wrong magic / version / model, absurd sizes, length fields that move
bytes between sections, empty sections, pure random bytes, payload corruption with the
container CRC *recomputed* (so that the range decoder really sees garbage), damaged or
bomb-sized alpha planes, and "forged" files: valid range-coded streams made up for a size
nobody encoded (they must decode), also for sizes that are only huge once padded to the
model's stride.

Every case must end in a `DQError` or in a correct decode. Anything else is a failure:

  crash   any other exception (printed with its traceback and the mutation)
  hang    the case ran past --time-limit seconds
  memory  the process peak RSS grew by more than --mem-mb during the case, or an
          allocation failed (the address space is capped at start-up, see --vm-headroom-gb,
          so a file that asks for a huge image fails to allocate rather than swapping)
  wrong   a decode that succeeded but is not right: size or mode other than the header's,
          or (for mutations that leave the image unchanged) pixels other than the clean decode

Replays are exact: case K of seed S is always the same bytes (--case K, --save DIR).
--probe-limit also reports what the largest allowed file costs (not a pass/fail criterion).

    OMP_NUM_THREADS=1 python benchmarks/fuzz_decode.py --cases 10000 --seed 0
    python benchmarks/fuzz_decode.py --seed 0 --case 1234     # replay one case, verbosely

Exit status: 0 when every case is a DQError or a correct decode, 1 otherwise.
"""

from __future__ import annotations

import argparse
import faulthandler
import random
import re
import resource
import signal
import struct
import sys
import time
import traceback
import warnings
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import torch
    from PIL import Image

    from dqcodec.codec import DEFAULT_MAX_PIXELS, Codec
    from dqcodec.errors import DQError
    from dqcodec.testing import photo, tiny_model

# ---------------------------------------------------------------------------------------
# test images (the tiny random model and photo() come from dqcodec.testing)


def test_image(width: int, height: int, mode: str, seed: int) -> Image.Image:
    image = photo(width, height, seed)
    if mode in ("L", "LA"):
        image = image.convert("L")
    if mode in ("RGBA", "LA"):
        alpha = (np.arange(width * height).reshape(height, width) * 7 + seed) % 256
        image = image.convert(mode)
        image.putalpha(Image.fromarray(alpha.astype(np.uint8), "L"))
    return image


# ---------------------------------------------------------------------------------------
# the container layout, written out independently of dqcodec.container on purpose

MAGIC = b"\x89DQC"
_HEADER = struct.Struct("<4sBBBB8sIIIIII")  # magic .. index CRC
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _CRC.size  # 44
FIELDS = (
    "magic",
    "version",
    "mode",
    "quality",
    "rate_point",
    "model_id",
    "width",
    "height",
    "n_top",
    "n_bottom",
    "n_alpha",
    "index_crc",
)
MODES = ("RGB", "L", "RGBA", "LA")


def parse(data: bytes) -> tuple[dict, bytes, bytes, bytes]:
    """A well-formed file -> (header fields, top, bottom, alpha); no checks."""
    header = dict(zip(FIELDS, _HEADER.unpack_from(data)))
    a = HEADER_SIZE + header["n_top"]
    b = a + header["n_bottom"]
    return header, data[HEADER_SIZE:a], data[a:b], data[b:]


def build(
    header: dict,
    payload: bytes,
    fix_lengths: tuple[bytes, bytes, bytes] | None = None,
    crc: int | None = None,
) -> bytes:
    """Header fields + payload -> file bytes with the container CRC recomputed (or `crc`).

    With fix_lengths=(top, bottom, alpha) the length fields are set from the sections and the
    payload is their concatenation."""
    header = dict(header)
    if fix_lengths is not None:
        top, bottom, alpha = fix_lengths
        header.update(n_top=len(top), n_bottom=len(bottom), n_alpha=len(alpha))
        payload = top + bottom + alpha
    packed = _HEADER.pack(*(header[f] for f in FIELDS))
    if crc is None:
        crc = zlib.crc32(packed[4:] + payload)
    return packed + _CRC.pack(crc) + payload


def fix_crc(data: bytes) -> bytes:
    """Recompute the container CRC of (possibly mutated) file bytes, if a header is there."""
    if len(data) < HEADER_SIZE:
        return data
    return data[:40] + _CRC.pack(zlib.crc32(data[4:40] + data[HEADER_SIZE:])) + data[HEADER_SIZE:]


# ---------------------------------------------------------------------------------------
# samples and cases

SAMPLE_SPECS = [  # width, height, mode
    (64, 64, "RGB"),
    (1, 1, "RGB"),
    (37, 1, "L"),
    (100, 67, "RGBA"),
    (130, 70, "RGB"),
    (1, 129, "LA"),
    (200, 150, "RGB"),
]


@dataclass
class Sample:
    name: str
    data: bytes
    decoded: Image.Image  # what a clean decode gives
    header: dict
    top: bytes
    bottom: bytes
    alpha: bytes


def build_samples(codec: Codec, specs=SAMPLE_SPECS) -> list[Sample]:
    samples = []
    for i, (w, h, mode) in enumerate(specs):
        data = codec.encode(test_image(w, h, mode, i))
        decoded = codec.decode(data)
        header, top, bottom, alpha = parse(data)
        samples.append(Sample(f"{w}x{h}{mode}", data, decoded, header, top, bottom, alpha))
    return samples


@dataclass
class Case:
    index: int
    kind: str
    what: str  # the mutation, in words
    data: bytes
    sample: Sample
    expect_same: bool = True  # a successful decode must equal the sample's clean decode
    max_pixels: int = DEFAULT_MAX_PIXELS


def _random_words(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(4 * n)


def _flip_bits(
    rng: random.Random, data: bytes, lo: int, hi: int, k: int
) -> tuple[bytes, list[int]]:
    buf = bytearray(data)
    bits = sorted(rng.randrange(lo * 8, hi * 8) for _ in range(k)) if hi > lo else []
    for bit in bits:
        buf[bit // 8] ^= 1 << (bit % 8)
    return bytes(buf), bits


_BOMB_CACHE: dict[int, bytes] = {}


def zlib_bomb(size: int) -> bytes:
    """zlib data that inflates to `size` zero bytes (about 1000:1)."""
    if size not in _BOMB_CACHE:
        comp = zlib.compressobj(9)
        chunk = bytes(1 << 22)
        parts = [comp.compress(chunk) for _ in range(size // len(chunk))]
        parts.append(comp.compress(bytes(size % len(chunk))))
        parts.append(comp.flush())
        _BOMB_CACHE[size] = b"".join(parts)
    return _BOMB_CACHE[size]


_FORGED: dict[tuple, tuple[bytes, bytes, int]] = {}


@torch.inference_mode()
def forge_streams(
    codec: Codec, width: int, height: int, bottom: bool = True
) -> tuple[bytes, bytes, int]:
    """Valid range-coded streams for a `width` x `height` image that nobody encoded: every
    index is the prior's most likely one, so the streams are a few bytes whatever the size.
    -> (top, bottom, index CRC). With bottom=False only the top stream is valid (and the
    bottom one is empty), which is enough to make a decoder build the full-size tensors."""
    from dqcodec.codec import index_checksum
    from dqcodec.range_coding import IndexEncoder

    key = (id(codec), width, height, bottom)
    if key in _FORGED:
        return _FORGED[key]
    model, stride = codec.model, codec.stride

    def run(level, cond, prior):
        encoder = IndexEncoder()

        def choose(p, groups, logits, rows, mask, table):
            chosen = logits.argmax(-1)
            encoder.encode(chosen, logits, table)
            return chosen

        y_hat, indices, _ = level._run_passes(cond, point, choose, integer=prior)
        return encoder.finish(), y_hat, indices

    shape = (-(-height // stride), -(-width // stride))
    point = torch.tensor([codec.rate_point])
    integer = codec.integer_model(codec.rate_point)
    top, y_top, i_top = run(
        model.top, torch.ones(1, 1, *shape), (integer.top, integer.top_input(*shape))
    )
    if not bottom:
        _FORGED[key] = (top, b"", 0)
    else:
        cond = model.condition_from_top(y_top, point)
        bot, _, i_bottom = run(model.bottom, cond, (integer.bottom, integer.condition(i_top)))
        _FORGED[key] = (top, bot, index_checksum(i_top, i_bottom))
    return _FORGED[key]


def m_forged(rng, s, codec):
    """A fully valid file for a size the payload was never encoded at: must decode."""
    w = rng.choice([1, 63, 64, 65, 129, rng.randint(1, 512)])
    h = rng.choice([1, 63, 64, 65, 129, rng.randint(1, 512)])
    top, bottom, crc = forge_streams(codec, w, h)
    header = dict(s.header, width=w, height=h, index_crc=crc)
    alpha = s.alpha
    if MODES[s.header["mode"]] in ("RGBA", "LA"):
        alpha = zlib.compress(bytes(range(256)) * (w * h // 256) + bytes(w * h % 256))
    data = build(header, b"", fix_lengths=(top, bottom, alpha))
    return f"forged valid streams for {w}x{h} ({len(top) + len(bottom)} payload bytes)", data, False


# all over max_pixels once padded (2**20 x 1 pads to exactly 2**26: a legal size, whose cost
# is what --probe-limit measures)
SKINNY = [((1 << 20) + 1, 1), (1, 1 << 22), (1 << 24, 1), (DEFAULT_MAX_PIXELS, 1)]


def m_forged_skinny(rng, s, codec):
    """Within max_pixels by area but huge once padded to the stride, with a valid top stream
    so that decoding gets as far as building the full-size tensors."""
    w, h = rng.choice(SKINNY)
    top, bottom, _ = forge_streams(codec, w, h, bottom=False)
    data = build(dict(s.header, width=w, height=h), b"", fix_lengths=(top, bottom, s.alpha))
    padded = (-(-w // 64) * 64) * (-(-h // 64) * 64)
    return (
        f"size {w}x{h}, {padded} pixels once padded, forged top stream (CRC recomputed)",
        data,
        True,
    )


def m_truncate(rng, s):
    data = s.data
    cut = rng.choice(
        [
            rng.randrange(0, HEADER_SIZE),
            rng.randrange(HEADER_SIZE, len(data)),
            len(data) - 1,
            len(data) - rng.randint(1, 4),
        ]
    )
    return f"truncated to {cut} of {len(data)} bytes", data[:cut], True


def m_extend(rng, s):
    extra = rng.randbytes(rng.choice([1, 3, 4, 8, rng.randint(1, 256)]))
    return f"{len(extra)} random bytes appended", s.data + extra, True


def m_bitflip(rng, s):
    k = rng.choice([1, 1, 2, 3, 8])
    data, bits = _flip_bits(rng, s.data, 0, len(s.data), k)
    return f"bits {bits} flipped (CRC not fixed)", data, True


def m_header_bitflip(rng, s):
    k = rng.choice([1, 2])
    data, bits = _flip_bits(rng, s.data, 0, HEADER_SIZE, k)
    fixed = rng.random() < 0.5
    if fixed:
        data = fix_crc(data)
    return f"header bits {bits} flipped (CRC {'recomputed' if fixed else 'not fixed'})", data, False


def m_overwrite(rng, s):
    buf = bytearray(s.data)
    start = rng.randrange(len(buf))
    n = min(rng.randint(1, 16), len(buf) - start)
    buf[start : start + n] = rng.randbytes(n)
    return f"bytes {start}..{start + n} overwritten with random bytes", bytes(buf), True


def m_wrong_magic(rng, s):
    magic = rng.choice([b"\x89PNG", b"DQC\x89", b"\x00\x00\x00\x00", rng.randbytes(4), b"\x89DQc"])
    if magic == MAGIC:
        magic = b"\x89DQc"
    return f"magic replaced by {magic!r}", magic + s.data[4:], True


def m_wrong_version(rng, s):
    version = rng.choice([0, 2, 3, 255, rng.randint(2, 255)])
    data = build(dict(s.header, version=version), s.data[HEADER_SIZE:])
    return f"version {version} (CRC recomputed)", data, True


def m_absurd_size(rng, s):
    big = [0, 65536, 100000, 1 << 20, 1 << 31, (1 << 32) - 1, rng.randrange(1 << 32)]
    w = rng.choice(big + [1, s.header["width"]])
    h = rng.choice(big + [1, s.header["height"]])
    if 0 < w * h <= DEFAULT_MAX_PIXELS:
        w = h = 100000
    data = build(dict(s.header, width=w, height=h), s.data[HEADER_SIZE:])
    return f"size {w}x{h} (CRC recomputed)", data, True


def m_skinny_size(rng, s):
    """Within max_pixels by area, but the model pads each side to its stride (64)."""
    w = rng.choice(
        [
            (1 << 20) + 1,
            1 << 22,
            1 << 24,
            DEFAULT_MAX_PIXELS,
            rng.randint((1 << 20) + 1, DEFAULT_MAX_PIXELS),
        ]
    )
    w, h = (w, 1) if rng.random() < 0.5 else (1, w)
    data = build(dict(s.header, width=w, height=h), s.data[HEADER_SIZE:])
    return (
        f"size {w}x{h}, under max_pixels but {64 * w * h} pixels once padded (CRC recomputed)",
        data,
        True,
    )


def m_moderate_size(rng, s):
    w = rng.choice([1, 2, 63, 64, 65, 127, 129, rng.randint(1, 1024)])
    h = rng.choice([1, 2, 63, 64, 65, 127, 129, rng.randint(1, 1024)])
    data = build(dict(s.header, width=w, height=h), s.data[HEADER_SIZE:])
    return (
        f"size {w}x{h} instead of {s.header['width']}x{s.header['height']} (CRC recomputed)",
        data,
        False,
    )


def m_mode(rng, s):
    mode = rng.choice([0, 1, 2, 3, 4, 255])
    data = build(dict(s.header, mode=mode), s.data[HEADER_SIZE:])
    return f"mode byte {mode} instead of {s.header['mode']} (CRC recomputed)", data, False


def m_model_id(rng, s):
    mid = rng.choice([bytes(8), rng.randbytes(8), s.header["model_id"][::-1]])
    if mid == s.header["model_id"]:
        mid = bytes(b ^ 0xFF for b in mid)
    data = build(dict(s.header, model_id=mid), s.data[HEADER_SIZE:])
    return f"model id {mid.hex()} (CRC recomputed)", data, True


def m_quality_rate_point(rng, s):
    q, r = rng.randrange(256), rng.randrange(256)
    data = build(dict(s.header, quality=q, rate_point=r), s.data[HEADER_SIZE:])
    return f"quality {q}, rate point {r} (CRC recomputed)", data, True


def m_index_crc(rng, s):
    crc = s.header["index_crc"] ^ (1 << rng.randrange(32))
    data = build(dict(s.header, index_crc=crc), s.data[HEADER_SIZE:])
    return f"index CRC {crc:#010x} (container CRC recomputed)", data, True


def m_length_shift(rng, s):
    """Move the boundary between two sections; the total (so the file length) is unchanged."""
    h = dict(s.header)
    pair = rng.choice([("n_top", "n_bottom"), ("n_bottom", "n_alpha"), ("n_top", "n_alpha")])
    delta = rng.choice([-8, -4, -1, 1, 3, 4, 8, rng.randint(-64, 64)]) or 4
    delta = max(-h[pair[0]], min(delta, h[pair[1]]))
    h[pair[0]] += delta
    h[pair[1]] -= delta
    data = build(h, s.data[HEADER_SIZE:])
    return f"{delta:+d} bytes moved from {pair[1]} to {pair[0]} (CRC recomputed)", data, True


def m_length_change(rng, s):
    h = dict(s.header)
    name = rng.choice(["n_top", "n_bottom", "n_alpha"])
    h[name] = rng.choice(
        [0, h[name] + 1, max(h[name] - 1, 0), h[name] + 4, (1 << 32) - 1, rng.randrange(1 << 32)]
    )
    data = build(h, s.data[HEADER_SIZE:])
    return f"{name} = {h[name]} (CRC recomputed, payload unchanged)", data, True


def m_zero_payload(rng, s):
    which = rng.choice(["top", "bottom", "both", "all"])
    top = b"" if which in ("top", "both", "all") else s.top
    bottom = b"" if which in ("bottom", "both", "all") else s.bottom
    alpha = b"" if which == "all" else s.alpha
    data = build(s.header, b"", fix_lengths=(top, bottom, alpha))
    return f"empty {which} payload (lengths and CRC fixed)", data, True


def m_random_bytes(rng, s):
    n = rng.choice([0, 1, 3, 4, 43, 44, 45, rng.randint(0, 4096)])
    return f"{n} random bytes", rng.randbytes(n), True


def m_magic_random(rng, s):
    n = rng.choice([0, 39, 40, 41, rng.randint(0, 512)])
    data = MAGIC + rng.randbytes(n)
    fixed = rng.random() < 0.5
    if fixed:
        data = fix_crc(data)
    return f"magic + {n} random bytes (CRC {'recomputed' if fixed else 'not fixed'})", data, True


def m_header_random(rng, s):
    """A random but self-consistent header (version 1, valid mode, lengths of the payload)."""
    h = dict(
        s.header,
        mode=rng.randrange(4),
        width=rng.randint(1, 512),
        height=rng.randint(1, 512),
        index_crc=rng.randrange(1 << 32),
    )
    data = build(h, s.data[HEADER_SIZE:])
    return (
        f"random header fields {h['width']}x{h['height']} mode {h['mode']} (CRC recomputed)",
        data,
        False,
    )


def m_payload_crc_fixed(rng, s):
    """Corrupt the range-coded sections and recompute the container CRC."""
    top, bottom = s.top, s.bottom
    section = rng.choice(["top", "bottom"])
    target = top if section == "top" else bottom
    how = rng.choice(
        [
            "flip",
            "flip",
            "overwrite",
            "truncate",
            "extend",
            "replace",
            "swap",
            "shuffle",
            "zero",
            "ones",
        ]
    )
    if how == "flip" and target:
        k = rng.choice([1, 1, 2, 4, 16])
        target, bits = _flip_bits(rng, target, 0, len(target), k)
        what = f"bits {bits} of {section} flipped"
    elif how == "overwrite" and target:
        start = rng.randrange(len(target))
        n = min(rng.randint(1, 16), len(target) - start)
        target = target[:start] + rng.randbytes(n) + target[start + n :]
        what = f"{section}[{start}:{start + n}] overwritten"
    elif how == "truncate" and target:
        cut = rng.randrange(len(target))
        target = target[:cut]
        what = f"{section} truncated to {cut} bytes"
    elif how == "extend":
        n = rng.choice([1, 4, 8, rng.randint(1, 64)])
        target = target + rng.randbytes(n)
        what = f"{n} random bytes appended to {section}"
    elif how == "swap":
        top, bottom = bottom, top
        target = top if section == "top" else bottom
        what = "top and bottom swapped"
    elif how == "shuffle" and len(target) >= 8:
        words = [target[i : i + 4] for i in range(0, len(target) - len(target) % 4, 4)]
        rng.shuffle(words)
        target = b"".join(words) + target[len(words) * 4 :]
        what = f"words of {section} shuffled"
    elif how == "zero":
        target = bytes(len(target))
        what = f"{section} zeroed"
    elif how == "ones":
        target = b"\xff" * len(target)
        what = f"{section} set to 0xff"
    else:
        n = rng.choice([1, 2, 3, rng.randint(1, 256)])
        target = _random_words(rng, n)
        what = f"{section} replaced by {n} random words"
    if section == "top":
        top = target
    else:
        bottom = target
    data = build(s.header, b"", fix_lengths=(top, bottom, s.alpha))
    return what + " (lengths and CRC recomputed)", data, True


def m_splice(rng, s, samples):
    other = rng.choice(samples)
    which = rng.choice(["top", "bottom", "header"])
    if which == "top":
        data = build(s.header, b"", fix_lengths=(other.top, s.bottom, s.alpha))
    elif which == "bottom":
        data = build(s.header, b"", fix_lengths=(s.top, other.bottom, s.alpha))
    else:
        data = build(
            dict(
                other.header,
                n_top=s.header["n_top"],
                n_bottom=s.header["n_bottom"],
                n_alpha=s.header["n_alpha"],
            ),
            s.data[HEADER_SIZE:],
        )
    return f"{which} taken from sample {other.name} (CRC recomputed)", data, other is s


def m_alpha(rng, s):
    w, h = s.header["width"], s.header["height"]
    how = rng.choice(["random", "wrong size", "not zlib", "bomb", "empty", "truncated"])
    if how == "random":
        alpha = rng.randbytes(rng.randint(1, 64))
    elif how == "wrong size":
        alpha = zlib.compress(bytes(w * h + rng.choice([-1, 1, 100])))
    elif how == "not zlib":
        alpha = b"\x00" * (w * h)
    elif how == "bomb":
        alpha = zlib_bomb(256 << 20)
    elif how == "truncated":
        alpha = s.alpha[: len(s.alpha) // 2]
    else:
        alpha = b""
    mode = s.header["mode"] if MODES[s.header["mode"]] in ("RGBA", "LA") else 2
    data = build(dict(s.header, mode=mode), b"", fix_lengths=(s.top, s.bottom, alpha))
    return (
        f"alpha plane {how} ({len(alpha)} bytes), mode {MODES[mode]} (CRC recomputed)",
        data,
        True,
    )


MUTATIONS = {  # name: (function, weight)
    "truncate": (m_truncate, 8),
    "extend": (m_extend, 5),
    "bitflip": (m_bitflip, 10),
    "header-bitflip": (m_header_bitflip, 6),
    "overwrite": (m_overwrite, 5),
    "wrong-magic": (m_wrong_magic, 3),
    "wrong-version": (m_wrong_version, 3),
    "absurd-size": (m_absurd_size, 6),
    "skinny-size": (m_skinny_size, 0.3),  # slow (seconds per case): same bug every time
    "moderate-size": (m_moderate_size, 4),
    "mode": (m_mode, 3),
    "model-id": (m_model_id, 3),
    "quality-rate-point": (m_quality_rate_point, 2),
    "index-crc": (m_index_crc, 2),
    "length-shift": (m_length_shift, 5),
    "length-change": (m_length_change, 4),
    "zero-payload": (m_zero_payload, 3),
    "random-bytes": (m_random_bytes, 3),
    "magic-random": (m_magic_random, 3),
    "header-random": (m_header_random, 3),
    "payload-crc-fixed": (m_payload_crc_fixed, 20),
    "splice": (m_splice, 4),
    "alpha": (m_alpha, 3),
    "forged": (m_forged, 3),
    "forged-skinny": (m_forged_skinny, 0.3),
}
_NEEDS_CODEC = (m_forged, m_forged_skinny)


def make_case(
    seed: int,
    index: int,
    samples: list[Sample],
    kinds: list[str] | None = None,
    codec: Codec | None = None,
) -> Case:
    """Case `index` of run `seed`: the same arguments always give the same bytes. The forged
    mutations need the codec (they are left out without one)."""
    rng = random.Random(f"{seed}:{index}")
    names = kinds or [
        k for k, (f, _) in MUTATIONS.items() if codec is not None or f not in _NEEDS_CODEC
    ]
    kind = rng.choices(names, weights=[MUTATIONS[k][1] for k in names])[0]
    sample = rng.choice(samples)
    func = MUTATIONS[kind][0]
    if func is m_splice:
        what, data, expect_same = func(rng, sample, samples)
    elif func in _NEEDS_CODEC:
        what, data, expect_same = func(rng, sample, codec)
    else:
        what, data, expect_same = func(rng, sample)
    return Case(index, kind, f"[{sample.name}] {what}", data, sample, expect_same)


# ---------------------------------------------------------------------------------------
# running a case


class Timeout(BaseException):
    """Raised by SIGALRM; a BaseException so that no `except Exception` swallows it."""


def _on_alarm(signum, frame):
    raise Timeout()


@dataclass
class Result:
    case: Case
    outcome: str  # refused | ok | wrong | crash | hang
    message: str = ""
    seconds: float = 0.0
    rss_growth_mb: float = 0.0
    memory: bool = False  # the case allocated too much (in addition to its outcome)
    trace: str = ""


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (VmHWM) so each case's own peak can be read."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMeter:
    """Peak RSS growth over a block: VmHWM after a reset where Linux allows it, else the
    growth of getrusage's lifetime maximum (which misses peaks below an earlier one)."""

    def __enter__(self):
        self.per_case = _reset_peak_rss()
        self.start = _status_mb("VmRSS") if self.per_case else peak_rss_mb()
        return self

    def __exit__(self, *exc):
        end = _status_mb("VmHWM") if self.per_case else peak_rss_mb()
        self.growth_mb = max(0.0, (end or 0.0) - (self.start or 0.0))
        return False


def _check_decoded(case: Case, image) -> str:
    """'' when a successful decode is acceptable, else why not."""
    header = dict(zip(FIELDS, _HEADER.unpack_from(case.data)))
    if not isinstance(image, Image.Image):
        return f"decode returned {type(image).__name__}"
    if image.size != (header["width"], header["height"]):
        return f"decoded size {image.size} but header says {header['width']}x{header['height']}"
    if image.mode != MODES[header["mode"]]:
        return f"decoded mode {image.mode} but header says {MODES[header['mode']]}"
    if case.expect_same:
        ref = case.sample.decoded
        if image.size != ref.size or image.mode != ref.mode or image.tobytes() != ref.tobytes():
            return "decoded pixels differ from the clean decode (corruption not detected)"
    return ""


def run_case(codec: Codec, case: Case, time_limit: float = 5.0, mem_mb: float = 200.0) -> Result:
    meter = PeakMeter().__enter__()
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    start = time.perf_counter()
    try:
        try:
            image = codec.decode(case.data, max_pixels=case.max_pixels)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            elapsed = time.perf_counter() - start
    except Timeout:
        result = Result(case, "hang", f"interrupted after {time_limit:g} s")
    except DQError as exc:
        result = Result(case, "refused", str(exc))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a pyo3 PanicException is a BaseException
        result = Result(
            case,
            "crash",
            f"{type(exc).__name__}: {exc}",
            trace="".join(traceback.format_exception(exc, limit=-4)),
        )
    else:
        problem = _check_decoded(case, image)
        result = Result(case, "wrong" if problem else "ok", problem)
    finally:
        signal.signal(signal.SIGALRM, old)
    result.seconds = elapsed
    if result.outcome != "hang" and elapsed > time_limit:
        result.outcome, result.message = (
            "hang",
            f"took {elapsed:.1f} s (limit {time_limit:g} s); " + result.message,
        )
    meter.__exit__(None, None, None)
    result.rss_growth_mb = meter.growth_mb
    text = result.message.lower()
    if (
        result.rss_growth_mb > mem_mb
        or "allocate" in text
        or "out of memory" in text
        or "memoryerror" in text
    ):
        result.memory = True
    return result


def limit_address_space(headroom_gb: float) -> None:
    """Cap virtual memory at what the process maps now plus headroom: a huge allocation then
    fails inside the decoder instead of pushing the machine into the OOM killer."""
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            current = int(line.split()[1]) * 1024
            break
    else:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = current + int(headroom_gb * (1 << 30))
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


# ---------------------------------------------------------------------------------------
# reporting

_NUM = re.compile(r"0x[0-9a-f]+|[0-9a-f]{16}|\d+")


def message_key(message: str) -> str:
    return _NUM.sub("#", message)[:110]


FAILURES = ("crash", "hang", "wrong")
COLUMNS = ("refused", "ok", "wrong", "crash", "hang", "memory")


def summarize(results: list[Result], seconds: float) -> str:
    by_kind: dict[str, Counter] = defaultdict(Counter)
    slowest: dict[str, float] = defaultdict(float)
    for r in results:
        by_kind[r.case.kind][r.outcome] += 1
        by_kind[r.case.kind]["memory"] += r.memory
        slowest[r.case.kind] = max(slowest[r.case.kind], r.seconds)
    head = f"{'mutation':<18}{'cases':>7}" + "".join(f"{c:>9}" for c in COLUMNS) + f"{'max ms':>9}"
    lines = [head, "-" * len(head)]
    total = Counter()
    for kind in MUTATIONS:
        if kind not in by_kind:
            continue
        c = by_kind[kind]
        n = sum(c[o] for o in ("refused", "ok", "wrong", "crash", "hang"))
        total.update(c)
        total["cases"] += n
        lines.append(
            f"{kind:<18}{n:>7}"
            + "".join(f"{c[o]:>9}" for o in COLUMNS)
            + f"{slowest[kind] * 1000:>9.0f}"
        )
    lines.append("-" * len(head))
    lines.append(
        f"{'total':<18}{total['cases']:>7}"
        + "".join(f"{total[o]:>9}" for o in COLUMNS)
        + f"{max(slowest.values(), default=0) * 1000:>9.0f}"
    )

    messages = Counter(message_key(r.message) for r in results if r.outcome == "refused")
    lines += ["", "DQError messages (numbers as #):"]
    lines += [f"{n:>7}  {m}" for m, n in messages.most_common()]

    crc_fixed = [r for r in results if r.case.kind == "payload-crc-fixed"]
    if crc_fixed:
        caught = sum("index checksum" in r.message for r in crc_fixed)
        by_range = sum(
            r.outcome == "refused" and "index checksum" not in r.message for r in crc_fixed
        )
        same = sum(r.outcome == "ok" for r in crc_fixed)
        wrong = sum(r.outcome == "wrong" for r in crc_fixed)
        lines += [
            "",
            f"payload corrupted with the container CRC recomputed: {len(crc_fixed)} cases",
            f"  caught by the index checksum       {caught:>6} "
            f"({100 * caught / len(crc_fixed):.1f}%)",
            f"  refused earlier (range decoder...) {by_range:>6}",
            f"  decoded, identical image (harmless){same:>6}",
            f"  decoded, different image (missed)  {wrong:>6}",
        ]

    worst = max(results, key=lambda r: r.rss_growth_mb, default=None)
    if worst:
        lines += [
            "",
            f"largest peak-RSS growth in one case: {worst.rss_growth_mb:.0f} MB "
            f"(case {worst.case.index}, {worst.case.kind}: {worst.case.what})",
        ]
        big = sorted(
            r.rss_growth_mb
            for r in results
            if r.case.kind not in ("alpha", "forged-skinny", "skinny-size")
        )
        if big:
            lines.append(
                f"  without the alpha and skinny mutations: max {big[-1]:.0f} MB, "
                f"median {big[len(big) // 2]:.1f} MB"
            )
    lines.append(f"{len(results)} cases in {seconds:.1f} s")
    return "\n".join(lines)


def report_failure(r: Result, seed: int, out=sys.stdout) -> None:
    label = r.outcome.upper() if r.outcome in FAILURES else "MEMORY"
    print(f"\n=== {label} case {r.case.index} ({r.case.kind}): {r.case.what}", file=out)
    print(f"    {r.message}  [{r.seconds:.2f} s, peak RSS +{r.rss_growth_mb:.0f} MB]", file=out)
    print(
        f"    replay: python benchmarks/fuzz_decode.py --seed {seed} --case {r.case.index}",
        file=out,
    )
    if r.trace:
        print("    " + r.trace.rstrip().replace("\n", "\n    "), file=out)


def probe_limit(codec: Codec, samples: list[Sample], max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """Cost of the largest file the default limit lets through: a valid (forged) square image
    of max_pixels. Not a failure criterion, just the number a user should know."""
    side = int(max_pixels**0.5) // codec.stride * codec.stride
    s = samples[0]
    top, bottom, crc = forge_streams(codec, side, side)
    data = build(
        dict(s.header, mode=0, width=side, height=side, index_crc=crc),
        b"",
        fix_lengths=(top, bottom, b""),
    )
    with PeakMeter() as meter:
        start = time.perf_counter()
        try:
            width, height = codec.decode(data, max_pixels=max_pixels).size
            outcome = f"decoded {width}x{height}"
        except BaseException as exc:  # noqa: BLE001
            outcome = f"{type(exc).__name__}: {str(exc)[:120]}"
        seconds = time.perf_counter() - start
    return (
        f"probe: a valid {side}x{side} file of {len(data)} bytes (the max_pixels limit) -> "
        f"{outcome} in {seconds:.1f} s, peak RSS +{meter.growth_mb:.0f} MB"
    )


# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model", type=Path, help="a .safetensors model (default: a tiny random one)"
    )
    parser.add_argument("--case", type=int, action="append", help="run only this case (repeatable)")
    parser.add_argument(
        "--kind", action="append", choices=list(MUTATIONS), help="only these mutations"
    )
    parser.add_argument("--time-limit", type=float, default=5.0, help="seconds per case")
    parser.add_argument(
        "--mem-mb",
        type=float,
        default=200.0,
        help="peak-RSS growth in one case that counts as a memory failure",
    )
    parser.add_argument(
        "--vm-headroom-gb",
        type=float,
        default=4.0,
        help="address-space cap above what is mapped at start (0: no cap)",
    )
    parser.add_argument("--save", type=Path, help="write each failing input here as CASE.dq")
    parser.add_argument("--show", type=int, default=20, help="failures printed in full")
    parser.add_argument(
        "--probe-limit",
        action="store_true",
        help="also time and measure one valid file of the largest size allowed "
        "(informational; tens of seconds and GBs)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    if args.model:
        from dqcodec.zoo import read_model_file

        codec = Codec(read_model_file(args.model))
    else:
        codec = Codec(tiny_model(0))
    samples = build_samples(codec)
    zlib_bomb(256 << 20)  # build these before measuring
    if not args.kind or "forged-skinny" in args.kind:
        for w, h in SKINNY:
            forge_streams(codec, w, h, bottom=False)
    if args.vm_headroom_gb > 0:
        limit_address_space(args.vm_headroom_gb)
    faulthandler.enable()
    print(f"{len(samples)} samples: " + ", ".join(f"{s.name} ({len(s.data)} B)" for s in samples))

    indices = args.case or range(args.cases)
    results, shown = [], 0
    start = time.perf_counter()
    for n, i in enumerate(indices):
        case = make_case(args.seed, i, samples, args.kind, codec)
        # a hard watchdog for a hang that SIGALRM cannot interrupt (inside native code)
        faulthandler.dump_traceback_later(max(30.0, 6 * args.time_limit), exit=True)
        r = run_case(codec, case, args.time_limit, args.mem_mb)
        faulthandler.cancel_dump_traceback_later()
        results.append(r)
        failed = r.outcome in FAILURES or r.memory
        if args.case:
            print(
                f"case {i} ({case.kind}): {case.what}\n  -> {r.outcome}: {r.message} "
                f"[{r.seconds * 1000:.0f} ms, peak RSS +{r.rss_growth_mb:.0f} MB]"
            )
            if r.trace:
                print(r.trace)
        elif failed and shown < args.show:
            report_failure(r, args.seed)
            shown += 1
        if failed and args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / f"case{i}-{case.kind}.dq").write_bytes(case.data)
        if not args.case and (n + 1) % 1000 == 0:
            print(f"... {n + 1} cases, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    elapsed = time.perf_counter() - start

    print()
    print(summarize(results, elapsed))
    if args.probe_limit:
        print(probe_limit(codec, samples))
    bad = sum(r.outcome in FAILURES or r.memory for r in results)
    if bad:
        print(f"\nFAIL: {bad} cases crashed, hung, allocated too much or decoded wrongly")
        return 1
    print("\nOK: every case was refused with a DQError or decoded correctly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
