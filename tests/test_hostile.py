"""Hostile .dq files: every one must end in a DQError (with a message that says what is
wrong) or in a correct decode; never another exception, a hang or a huge allocation.

The mutations come from benchmarks/fuzz_decode.py (which runs thousands of them); here a
few hundred with a fixed seed, plus one test per kind of damage.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from dqcodec.codec import DEFAULT_MAX_PIXELS, Codec
from dqcodec.errors import DQError
from dqcodec.range_coding import IndexDecoder
from dqcodec.zoo import read_model_file

ROOT = Path(__file__).resolve().parents[1]


def _load_fuzzer():
    spec = importlib.util.spec_from_file_location(
        "fuzz_decode", ROOT / "benchmarks" / "fuzz_decode.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_decode", module)
    spec.loader.exec_module(module)
    return module


fz = _load_fuzzer()

SEED = 20240611
N_CASES = 400
# left out here: the 256 MB alpha bomb and the stride-padding sizes (slow, or large allocations
# while their bugs are open); they have their own tests below with small or mocked inputs
FAST_KINDS = [k for k in fz.MUTATIONS if k not in ("alpha", "skinny-size", "forged-skinny")]


@pytest.fixture(scope="module")
def codec(model_file):
    return Codec(read_model_file(model_file))


@pytest.fixture(scope="module")
def samples(codec):
    return fz.build_samples(codec)


@pytest.fixture(scope="module")
def sample(samples):
    return next(s for s in samples if s.name == "130x70RGB")


@pytest.fixture(scope="module")
def rgba(samples):
    return next(s for s in samples if s.name == "100x67RGBA")


class ReachedModel(Exception):
    pass


@pytest.fixture
def no_model(codec, monkeypatch):
    """Fail the test if decoding gets as far as running the model (so allocating)."""

    def refuse(*args, **kwargs):
        raise ReachedModel("decode ran the model")

    monkeypatch.setattr(codec.model, "decompress", refuse)
    return codec


def with_fields(sample, **fields) -> bytes:
    """The sample's file with header fields changed and the container CRC recomputed."""
    return fz.build(dict(sample.header, **fields), sample.data[fz.HEADER_SIZE :])


# --- the fuzz loop -----------------------------------------------------------------------


@pytest.fixture(scope="module", params=["torch", "numpy"])
def decoder(request, codec):
    """Each decoder of format-2 files: the torch model's, and NumPy's (numpy_decoder)."""
    return codec if request.param == "torch" else codec.decoder


def test_fuzz_cases_are_refused_or_decoded_correctly(codec, decoder, samples):
    failures = []
    kinds = set()
    for i in range(N_CASES):
        case = fz.make_case(SEED, i, samples, FAST_KINDS, codec)
        kinds.add(case.kind)
        r = fz.run_case(decoder, case, time_limit=5.0, mem_mb=200.0)
        if r.outcome not in ("refused", "ok") or r.memory:
            failures.append(
                f"case {i} {case.kind}: {case.what} -> {r.outcome}: {r.message}\n{r.trace}"
            )
    assert not failures, "\n".join(failures[:10])
    assert len(kinds) >= len(FAST_KINDS) - 2  # the seed exercises (almost) every mutation


def test_corrupt_payload_with_fixed_crc_is_refused(decoder, samples):
    """Garbage reaches the range decoder (the container CRC is recomputed): a DQError, or an
    image identical to the clean decode when the damage hit bits the decoder never reads."""
    refused = 0
    for i in range(60):
        case = fz.make_case(SEED + 1, i, samples, ["payload-crc-fixed"])
        r = fz.run_case(decoder, case)
        assert r.outcome in ("refused", "ok"), f"{case.what}: {r.outcome} {r.message}\n{r.trace}"
        refused += r.outcome == "refused"
        if r.outcome == "refused":
            assert "index checksum" in r.message or "cannot decode the .dq payload" in r.message, (
                r.message
            )
    assert refused >= 45


def test_forged_valid_streams_decode(codec, sample):
    """A file nobody encoded but that is valid decodes, at the size its header gives."""
    top, bottom, crc = fz.forge_streams(codec, 65, 3)
    data = fz.build(
        dict(sample.header, width=65, height=3, index_crc=crc), b"", fix_lengths=(top, bottom, b"")
    )
    assert codec.decode(data).size == (65, 3)


# --- sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [(100000, 100000), (2**32 - 1, 2**32 - 1), (2**32 - 1, 1), (1, 2**27), (8193, 8192)]
)
def test_absurd_dimensions_are_refused_before_allocating(no_model, sample, size):
    data = with_fields(sample, width=size[0], height=size[1])
    start = time.perf_counter()
    with pytest.raises(
        DQError, match=f"image is {size[0]}x{size[1]}\\b.*over the limit of {DEFAULT_MAX_PIXELS} "
    ):
        no_model.decode(data)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("size", [(2**26, 1), (1, 2**21)])
def test_sizes_huge_once_padded_are_refused_before_allocating(no_model, sample, size):
    with pytest.raises(DQError, match="over the limit"):
        no_model.decode(with_fields(sample, width=size[0], height=size[1]))


def test_max_pixels_can_be_raised(codec, sample, monkeypatch):
    data = sample.data  # 130 x 70 = 9100 pixels, 192 x 128 once padded for the model
    with pytest.raises(DQError, match="over the limit of 9099 pixels"):
        codec.decode(data, max_pixels=9099)
    assert codec.decode(data, max_pixels=192 * 128).size == (130, 70)
    # a larger limit lets a large image through the size check (to the model, mocked here)
    big = with_fields(sample, width=100000, height=100000)
    with pytest.raises(DQError, match="over the limit"):
        codec.decode(big)

    def reached(*args, **kwargs):
        raise ReachedModel()

    monkeypatch.setattr(codec.model, "decompress", reached)
    with pytest.raises(ReachedModel):
        codec.decode(big, max_pixels=10**11)


# --- each kind of damage, with its message --------------------------------------------------


def test_truncated(codec, sample):
    data, n = sample.data, len(sample.data)
    with pytest.raises(
        DQError, match=rf"truncated \.dq payload \({n - 1} bytes, header says {n}\)"
    ):
        codec.decode(data[:-1])
    with pytest.raises(DQError, match=r"truncated \.dq file \(incomplete header\)"):
        codec.decode(data[:43])
    with pytest.raises(DQError, match="not a .dq file"):
        codec.decode(data[:3])
    with pytest.raises(DQError, match="not a .dq file"):
        codec.decode(b"")


def test_extended(codec, sample):
    n = len(sample.data)
    with pytest.raises(
        DQError, match=rf"trailing data after \.dq payload \({n + 1} bytes, header says {n}\)"
    ):
        codec.decode(sample.data + b"\x00")


@pytest.mark.parametrize("bit", [5 * 8 + 1, 17 * 8, 26 * 8 + 3, 41 * 8, 60 * 8 + 7, -1])
def test_bit_flipped(codec, sample, bit):
    """Header (mode, width, length field), CRC and payload bits: the container CRC catches all."""
    data = bytearray(sample.data)
    bit %= 8 * len(data)
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(
        DQError, match=r"corrupt \.dq file \(CRC32 mismatch\)|\.dq payload \(\d+ bytes"
    ):
        codec.decode(bytes(data))


def test_wrong_magic(codec, sample):
    for magic in (b"\x89PNG", b"\x89DQc", b"\x00\x00\x00\x00"):
        with pytest.raises(DQError, match=r"not a \.dq file \(bad magic bytes\)"):
            codec.decode(magic + sample.data[4:])


def test_wrong_version(codec, sample):
    with pytest.raises(
        DQError, match=r"unsupported \.dq format version 3 \(this build reads 1, 2\)"
    ):
        codec.decode(with_fields(sample, version=3))
    data = bytearray(sample.data)
    data[4] = 0  # version 0 without fixing the CRC: the version is what gets reported
    with pytest.raises(DQError, match="unsupported .dq format version 0"):
        codec.decode(bytes(data))


def test_wrong_model(codec, sample, other_model_file):
    other = read_model_file(other_model_file)
    with pytest.raises(
        DQError, match=f"encoded with model {codec.model_id.hex()}.*pass the matching --model"
    ):
        Codec(other).decode(sample.data)
    with pytest.raises(DQError, match="encoded with model 0000000000000000"):
        codec.decode(with_fields(sample, model_id=bytes(8)))


def test_bad_mode_and_zero_size(codec, sample):
    for fields in ({"mode": 4}, {"mode": 255}, {"width": 0}, {"height": 0}):
        with pytest.raises(DQError, match=r"corrupt \.dq header \(bad mode or size\)"):
            codec.decode(with_fields(sample, **fields))


def test_index_checksum(codec, sample):
    with pytest.raises(DQError, match=r"out of sync with the encoder \(index checksum mismatch\)"):
        codec.decode(with_fields(sample, index_crc=sample.header["index_crc"] ^ 1))


def test_payload_lengths(codec, sample):
    h = sample.header
    moved = with_fields(sample, n_top=h["n_top"] + 1, n_bottom=h["n_bottom"] - 1)
    with pytest.raises(DQError, match="cannot decode the .dq payload .*multiple of 4"):
        codec.decode(moved)
    with pytest.raises(DQError, match=r"truncated \.dq payload"):
        codec.decode(with_fields(sample, n_bottom=2**32 - 1))
    empty = fz.build(h, b"", fix_lengths=(b"", b"", b""))
    with pytest.raises(DQError, match="index checksum mismatch|cannot decode the .dq payload"):
        codec.decode(empty)


def test_range_decoder_garbage_is_a_value_error():
    """constriction reports impossible data with AssertionError; IndexDecoder turns it into
    ValueError, which the codec reports as a corrupt payload."""
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 30, 30, 16) * 3
    rng = np.random.default_rng(0)
    raised = 0
    for _ in range(300):
        words = rng.integers(0, 2**32, rng.integers(0, 6), dtype=np.uint64).astype("<u4")
        try:
            IndexDecoder(words.tobytes()).decode(logits)
        except ValueError:
            raised += 1
    assert raised > 0


# --- the alpha plane ----------------------------------------------------------------------


def test_alpha_damage(codec, rgba):
    w, h = rgba.header["width"], rgba.header["height"]
    for alpha, message in [
        (b"", r"corrupt alpha plane in \.dq file$"),
        (b"\x00" * 16, r"corrupt alpha plane in \.dq file$"),
        (rgba.alpha[:-5], r"corrupt alpha plane in \.dq file$"),
        (zlib.compress(bytes(w * h - 1)), r"\(wrong size\)"),
        (zlib.compress(bytes(w * h + 1)), r"\(wrong size\)"),
    ]:
        data = fz.build(rgba.header, b"", fix_lengths=(rgba.top, rgba.bottom, alpha))
        with pytest.raises(DQError, match=message):
            codec.decode(data)


def test_alpha_data_in_a_mode_without_alpha(codec, rgba):
    for mode, name in ((0, "RGB"), (1, "L")):  # the spec: alpha length 0 when there is no alpha
        with pytest.raises(DQError, match=rf"corrupt \.dq header \(alpha data in a {name} file\)"):
            codec.decode(with_fields(rgba, mode=mode))


def test_alpha_mode_without_alpha(codec, sample):
    with pytest.raises(DQError, match="corrupt alpha plane"):
        codec.decode(with_fields(sample, mode=2))  # RGBA, but no alpha section


def test_alpha_bomb_is_not_inflated(codec, rgba):
    bomb = fz.zlib_bomb(32 << 20)  # 32 KB that inflates to 32 MB, for a 100 x 67 image
    data = fz.build(rgba.header, b"", fix_lengths=(rgba.top, rgba.bottom, bomb))
    tracemalloc.start()
    try:
        with pytest.raises(DQError, match="corrupt alpha plane"):
            codec.decode(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"decoding a 32 KB alpha plane allocated {peak >> 20} MB"


def test_header_is_44_bytes(sample):
    assert fz.HEADER_SIZE == 44 and sample.data[:4] == b"\x89DQC"
    assert struct.unpack_from("<I", sample.data, 16)[0] == 130
