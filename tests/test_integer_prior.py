"""The integer prior: exact arithmetic, an independent reimplementation, portable files."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from integer_reference import frequencies, model_tables
from PIL import Image

from dqcodec import runtime, zoo
from dqcodec.codec import Codec, load_codec
from dqcodec.container import DQFile
from dqcodec.decoding import load_decoder
from dqcodec.entropy_models import integer_prior
from dqcodec.entropy_models.calibration import calibrate_synthesized
from dqcodec.entropy_models.integer_prior import (
    EXP_TABLE,
    UNIFORM8,
    Float64Weights,
    derive,
    frequency_table,
)
from dqcodec.errors import DQError
from dqcodec.image_io import to_tensor
from dqcodec.layers.fixed_point import Format, IntConv, erf64, exp64, int_conv
from dqcodec.models.dq import _integer_level, pad_to_stride
from dqcodec.testing import TINY, photo, tiny_model, tiny_variable_rate_model

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "bsds500-test_100007.jpg"
DATA = Path(__file__).resolve().parent / "data"


def test_elementary_functions_are_accurate():
    x = np.linspace(-30, 30, 2001)
    assert np.allclose(exp64(x), np.array([math.exp(v) for v in x]), rtol=1e-14, atol=0)
    assert np.abs(erf64(x / 5) - np.array([math.erf(v / 5) for v in x])).max() < 2e-7


def test_tables_are_pinned():
    """The tables are derived with correctly rounded float64 operations only: every machine
    must get these bytes (a different digest means files would not decode across machines)."""
    assert hashlib.sha256(EXP_TABLE.tobytes()).hexdigest()[:16] == "8f0ebd7fa7c6b860"


@pytest.mark.parametrize(
    "transposed,kernel,bits", [(False, 3, 8), (False, 5, 12), (True, 3, 8), (False, 1, 15)]
)
def test_integer_convolution_is_exact(transposed, kernel, bits):
    """Against float64 convolution of the same integers (exact: every sum < 2^53)."""
    torch.manual_seed(0)
    cin, cout = 6, 5
    shape = (cin, cout, kernel, kernel) if transposed else (cout, cin, kernel, kernel)
    weight = np.random.default_rng(0).normal(size=shape)
    source = (
        Format(0.1, 3, -100, 100)
        if bits == 8
        else Format(0.1, 0, -(1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1)
    )
    out = Format(1.0, 0, -(1 << 40), 1 << 40)
    conv = int_conv(
        weight, None, source, None, np.full(cout, 1.0), out, bits, transposed=transposed
    )
    rng = np.random.default_rng(1)
    x = rng.integers(source.low, source.high + 1, (1, 7, 9, cin))
    x = x.astype(np.int8 if bits == 8 else np.int16)
    acc = torch.from_numpy(conv.accumulate(x, source.zero))
    w = torch.from_numpy(conv.weight.astype(np.float64))  # (k*k*cin, cout)
    w = w.reshape(kernel, kernel, cin, cout).permute(3, 2, 0, 1)
    real = (torch.from_numpy(x).to(torch.float64) - source.zero).permute(0, 3, 1, 2)
    if transposed:  # the conv over zero-spread input equals a transposed conv with flipped weights
        ref = F.conv_transpose2d(
            real, w.flip(2, 3).transpose(0, 1), stride=2, padding=kernel // 2, output_padding=1
        )
    else:
        ref = F.conv2d(real, w, padding=kernel // 2)
    zero_sum = source.zero * w.sum((1, 2, 3))  # the padding holds `zero`: its taps' share
    assert torch.equal(acc.to(torch.float64) - zero_sum, ref.permute(0, 2, 3, 1))


@pytest.mark.parametrize(
    "out_format,out_scale,bias",
    [
        (Format.wide(3.0), 0.5, 1.0),  # one sum step moves the output by under one level
        (Format.after_gelu(2.0), 0.7, 1.0),  # an output format with a zero point
        (Format.wide(3.0), 0.5, 1e6),  # every sum saturates: limits beyond int32's range
        (Format.wide(3.0), 1e-4, 1.0),  # one sum step skips levels: the outputs are clamped
    ],
)
@pytest.mark.parametrize("sums_dtype", [np.int32, np.int64])
def test_rescale_gives_the_clamped_rounded_outputs(out_format, out_scale, bias, sums_dtype):
    """Clamping the sums first (where that gives the same outputs) against the definition:
    clamp(((acc + bias) * m + 2^(shift-1)) >> shift) + zero, over every reachable sum and
    the sums at the edges of each channel's range."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(6, 5, 3, 3))
    source = Format.symmetric(1.0, 8)
    conv = int_conv(
        weight, bias * rng.normal(size=6), source, None, np.full(6, out_scale), out_format, 8
    )
    largest = int(np.abs(conv.weight).sum(0).max()) * conv.input_limit
    sums = rng.integers(-largest, largest + 1, (2000, 6))
    if conv.sum_limits is not None:
        low, high = conv.sum_limits[np.dtype(np.int64)]
        edges = [(edge + d)[None] for edge in (low, high) for d in (-1, 0, 1)]
        sums = np.concatenate([sums, *edges])
    sums = np.clip(sums, -largest, largest).astype(sums_dtype)
    exact = (sums.astype(np.int64) * conv.multiplier + conv.rounded_bias) >> conv.shift
    want = np.clip(exact, conv.scaled_low, conv.scaled_high) + conv.offset
    assert (conv.sum_limits is None) == (out_scale < 1e-3)
    assert np.array_equal(conv.rescale(sums.copy()), want)


def test_rescale_at_every_sum_of_a_range():
    """Every sum in [-3000, 3000] through channels whose multipliers reach one output level a
    step (m = 2^shift), divide the bounds' numerators exactly, or skip levels (m > 2^shift)."""
    multiplier = np.array([4, 8, 5, 3, 7, 9, 1])
    bias = np.array([0, 3, -7, 100, -1000, 2, 0])
    for shift in (3, 5):
        cout = len(multiplier)
        conv = IntConv(
            np.zeros((1, cout), np.int64),
            bias,
            multiplier,
            shift,
            1,
            np.full(cout, -60),
            np.full(cout, 10),
            np.array([0, 0, 2, 0, -3, 0, 1]),
            1,
            8,
        )
        sums = np.arange(-3000, 3001)[:, None].repeat(cout, 1)
        exact = (sums * multiplier + conv.rounded_bias) >> shift
        want = np.clip(exact, conv.scaled_low, conv.scaled_high) + conv.offset
        assert (conv.sum_limits is None) == (shift == 3)  # 9 > 2^3
        for dtype in (np.int32, np.int64):
            assert np.array_equal(conv.rescale(sums.astype(dtype)), want)


def test_frequency_tables_fill_the_coder_exactly():
    logits = np.random.default_rng(0).integers(-40000, 2000, (50, 64)).astype(np.float64)
    logits[0] = 0  # ties
    table = frequency_table(logits)
    assert np.array_equal(table.sum(-1), np.full(50, float((1 << 24) - 64)))
    assert (table >= 0).all() and np.array_equal(table, np.floor(table))
    ref = frequencies(logits.astype(np.int64), EXP_TABLE.astype(np.int64))
    assert np.array_equal(table.astype(np.int64), ref)


def _derive(model, calibration, *policy):
    return derive(Float64Weights(model.state_dict()), model.config, 0, calibration, *policy)


def _real_crops():
    image = Image.open(SAMPLE).convert("RGB")
    return [image.crop((0, 0, 192, 128)), image.crop((200, 120, 456, 312))]


def _check_against_reference(model, integer, point: int, image, rate_weight=None) -> None:
    points = model._points(1, point, None)
    x = pad_to_stride(to_tensor(image), model.config.top_stride)
    out = model.compress(x, rate_weight, point, integer=integer)
    top, bottom = out["indices"]["top"], out["indices"]["bottom"]
    seen = []

    def record(p, groups, logits, rows, mask, table, known=None):
        seen.append(table[0].long().numpy())
        return known[:, groups, rows][:, :, mask]

    ones = torch.ones(1, 1, *top.shape[-2:])
    model.top._run_passes(
        ones,
        points,
        lambda *a: record(*a, known=top),
        integer=_integer_level(integer, True, ones, None),
    )
    cond = model.condition_from_top(model.top.quantizer.lookup(top), points)
    model.bottom._run_passes(
        cond,
        points,
        lambda *a: record(*a, known=bottom),
        integer=_integer_level(integer, False, cond, {"indices": top}),
    )
    expected = model_tables(integer, top[0].numpy(), bottom[0].numpy(), EXP_TABLE.astype(np.int64))
    assert len(seen) == len(expected)
    for got, want in zip(seen, expected):
        assert np.array_equal(got, want)


@pytest.mark.parametrize("level", [1, 5, 9])
def test_numpy_reference_gives_the_same_tables(level):
    """An independent NumPy int64 implementation reproduces every pass's frequency table."""
    codec = load_codec(level)
    for image in _real_crops()[: 1 if level != 5 else 2]:
        _check_against_reference(
            codec.model,
            codec.integer_model(codec.rate_point),
            codec.rate_point,
            image,
            codec.rate_weight,
        )


@pytest.mark.parametrize("rows_per_reach", [4, 0])
def test_prior_in_bands_of_rows_gives_the_same_tables(monkeypatch, rows_per_reach):
    """Large latents make the prior's parameters in bands of rows, each with the rows its
    convolutions reach (dq-vr: 4 rows, 2 in the anchor pass): bands of the smallest height
    used (4 rows per row of reach) and of one row give every table the NumPy reference
    gives for the whole map."""
    monkeypatch.setattr(integer_prior, "BAND_POSITIONS", 1)
    monkeypatch.setattr(integer_prior, "BAND_ROWS_PER_REACH", rows_per_reach)
    codec = load_codec(5)
    integer = codec.integer_model(codec.rate_point)
    assert integer.bottom.reach(1, anchors=False) == 4
    assert integer.bottom.reach(1, anchors=True) == 2
    tall = Image.open(SAMPLE).convert("RGB").crop((0, 0, 128, 320))  # 20 latent rows
    _check_against_reference(codec.model, integer, codec.rate_point, tall, codec.rate_weight)


@pytest.mark.parametrize("threads", [1, 2])
def test_logits_in_shares_of_one_group_give_the_same_tables(monkeypatch, threads):
    """A pass's logits and tables made a group at a time, on one thread or two, are every
    table the NumPy reference gives."""
    monkeypatch.setattr(integer_prior, "SHARE_LOGITS", 1)
    monkeypatch.setattr(runtime, "_workers", threads)
    codec = load_codec(5)
    crop = _real_crops()[0]
    integer = codec.integer_model(codec.rate_point)
    _check_against_reference(codec.model, integer, codec.rate_point, crop, codec.rate_weight)


def test_numpy_reference_with_free_logits():
    model = tiny_model(0, dataclasses.replace(TINY, prior_free_logits=True))
    with torch.no_grad():
        for level in (model.top, model.bottom):
            for context in level.prior.contexts:
                context.free[1].weight.normal_(0, 0.3)
    integer = _derive(model, calibrate_synthesized(model, samples=2))
    _check_against_reference(model, integer, 0, photo(200, 140))


def test_variable_rate_tiny_model_round_trips():
    model = tiny_variable_rate_model()
    codec = Codec(model, rate_point=1, calibration=calibrate_synthesized(model, samples=2))
    data = codec.encode(photo(150, 100))
    assert DQFile.from_bytes(data).version == 2
    assert codec.decode(data).size == (150, 100)


def test_file_names_the_integer_prior():
    """Another calibration is another integer prior: its files are refused, never misread."""
    model = tiny_model()
    a = Codec(model, calibration=calibrate_synthesized(model, samples=2, seed=0))
    b = Codec(model, calibration=calibrate_synthesized(model, samples=2, seed=1))
    assert a.model_id != b.model_id and a.float_model_id == b.float_model_id
    with pytest.raises(DQError, match="encoded with model"):
        b.decode(a.encode(photo(64, 64)))


def test_policy_bit_widths_change_the_integer_weights():
    model = tiny_model()
    calibration = calibrate_synthesized(model, samples=2)
    wide, narrow = _derive(model, calibration), _derive(model, calibration, UNIFORM8)
    assert wide.weight_bits > narrow.weight_bits


@pytest.mark.parametrize("quality", [1, 5])
def test_files_from_release_0_1_0_decode(quality):
    """Format version 1 (the float prior) still decodes, to the pixels 0.1.0 decoded."""
    data = (DATA / f"release-0.1.0-q{quality}.dq").read_bytes()
    assert DQFile.from_bytes(data).version == 1
    decoded = load_codec(quality).decode(data)
    expected = Image.open(DATA / f"release-0.1.0-q{quality}.png")
    assert np.array_equal(np.asarray(decoded), np.asarray(expected))


@pytest.mark.parametrize("numpy_decoder", [False, True])
@pytest.mark.parametrize("quality", [1, 5, 9])
def test_files_from_release_0_2_0_decode(quality, numpy_decoder):
    """Format version 2 (the integer prior): the same codes on every machine (the index
    checksum in the file is checked), the pixels 0.2.0 decoded within 1 grey level, with the
    torch model's decoder and with NumPy's."""
    data = (DATA / f"release-0.2.0-q{quality}.dq").read_bytes()
    assert DQFile.from_bytes(data).version == 2
    codec = load_codec(quality)
    decoder = load_decoder(str(zoo.shipped_models()[quality].weights)) if numpy_decoder else codec
    decoded = np.asarray(decoder.decode(data, 1 << 26), dtype=np.int16)
    expected = np.asarray(Image.open(DATA / f"release-0.2.0-q{quality}.png"), dtype=np.int16)
    assert decoded.shape == expected.shape
    assert np.abs(decoded - expected).max() <= 1


CHILD = """
import sys, numpy as np
from dqcodec.decoding import decoder_for_file
data = open(sys.argv[1], 'rb').read()
image = decoder_for_file(data).decode(data, 1 << 26)  # the index CRC checks every index
assert "torch" not in sys.modules
np.save(sys.argv[2], np.asarray(image))
"""

# NumPy's OpenBLAS picks its kernels by CPU; OPENBLAS_CORETYPE forces older ones
CORE_TYPES = ("", "Nehalem", "Haswell")


@pytest.mark.parametrize("level", [1, 9])
def test_files_decode_under_other_kernels_and_thread_counts(tmp_path, level):
    """Encoded here (torch), decoded in processes with NumPy alone, on OpenBLAS's SSE4 and
    AVX2 kernels as well as the best this CPU has, with 1 and 2 threads: every decode
    succeeds (same indices, by the file's index CRC) and pixels agree within 1 grey level."""
    image = _real_crops()[1]
    codec = load_codec(level)
    data = codec.encode(image, effort=0)
    here = np.asarray(codec.decode(data)).astype(int)
    (tmp_path / "x.dq").write_bytes(data)
    for core in CORE_TYPES:
        for threads in (1, 2):
            env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
            env["OPENBLAS_NUM_THREADS"] = str(threads)
            if core:
                env["OPENBLAS_CORETYPE"] = core
            out = tmp_path / f"out-{core}-{threads}.npy"
            result = subprocess.run(
                [sys.executable, "-c", CHILD, str(tmp_path / "x.dq"), str(out)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert result.returncode == 0, (core, threads, result.stderr[-2000:])
            assert np.abs(np.load(out).astype(int) - here).max() <= 1, (core, threads)
