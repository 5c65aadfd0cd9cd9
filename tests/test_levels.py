"""Rate and quality of every shipped level on the bundled sample photo, through the public API.

Measured once (x86-64 CPU, one thread, effort 1 = the default) on the whole 481x321 sample:

    level  PSNR (dB, 8-bit RGB)  bpp (whole .dq file)
      1         25.865             0.1310
      2         26.285             0.1585
      3         29.257             0.3175
      4         31.969             0.4906
      5         34.270             0.6497
      6         36.053             0.8398
      7         37.149             1.0307
      8         37.825             1.2226
      9         38.175             1.3892

Each floor is 0.3 dB under the measured PSNR and each ceiling 5 % over the measured bpp, room
for other floating-point kernels in the encoder's analysis and search, not for a worse model.
"""

import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dqcodec
from dqcodec.codec import fixed_threads

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "bsds500-test_100007.jpg"
EFFORT = 1  # the default effort (dqcodec.options.DEFAULT_EFFORT)

# level: (PSNR floor in dB, bpp ceiling)
FLOORS = {
    1: (25.56, 0.138),
    2: (25.98, 0.167),
    3: (28.95, 0.334),
    4: (31.66, 0.516),
    5: (33.97, 0.683),
    6: (35.75, 0.882),
    7: (36.84, 1.083),
    8: (37.52, 1.284),
    9: (37.87, 1.459),
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@pytest.fixture(scope="module")
def results() -> dict[int, tuple[float, float]]:
    """level -> (PSNR, bpp) of the sample encoded from its path and decoded from the bytes.

    One thread: the values above came out the same with two, and on a busy 2-core machine two
    threads made each encode and decode ~20x slower (9 levels: ~8 s with one thread)."""
    with Image.open(SAMPLE) as im:
        reference = np.asarray(im.convert("RGB"))
    height, width = reference.shape[:2]
    assert (width, height) == (481, 321)
    out = {}
    with fixed_threads(1):
        for quality in FLOORS:
            data = dqcodec.encode(SAMPLE, quality=quality, effort=EFFORT)
            decoded = dqcodec.decode(data)
            assert decoded.size == (width, height) and decoded.mode == "RGB"
            out[quality] = (psnr(np.asarray(decoded), reference), len(data) * 8 / (width * height))
    print("\n" + "\n".join(f"q{q}: {p:.3f} dB, {b:.4f} bpp" for q, (p, b) in out.items()))
    return out


@pytest.mark.parametrize("quality", sorted(FLOORS))
def test_level_meets_its_floor(results, quality):
    measured_psnr, measured_bpp = results[quality]
    floor, ceiling = FLOORS[quality]
    assert measured_psnr >= floor, f"q{quality}: {measured_psnr:.3f} dB < floor {floor} dB"
    assert measured_bpp <= ceiling, f"q{quality}: {measured_bpp:.4f} bpp > ceiling {ceiling} bpp"


def test_levels_trade_rate_for_quality(results):
    psnrs = [results[q][0] for q in sorted(results)]
    bpps = [results[q][1] for q in sorted(results)]
    assert sorted(results) == list(range(1, 10))
    assert all(a < b for a, b in pairwise(psnrs)), psnrs
    assert all(a < b for a, b in pairwise(bpps)), bpps
