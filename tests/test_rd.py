import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from dqcodec.evaluation.classic_codecs import available_codecs, evaluate_baseline
from dqcodec.evaluation.rd import bd_rate, bd_table, load_published, plot_rd, psnr_at

# A realistic curve (Kodak JPEG means from shared/anchors): (bpp, psnr)
CURVE = [
    (0.221, 23.85),
    (0.327, 26.67),
    (0.423, 28.14),
    (0.508, 29.14),
    (0.660, 30.49),
    (0.786, 31.42),
    (0.906, 32.17),
    (1.037, 32.91),
    (1.239, 33.92),
    (1.570, 35.37),
]


def scaled(curve, factor):
    return [(b * factor, p) for b, p in curve]


def test_bd_rate_of_curve_with_itself_is_zero():
    assert bd_rate(CURVE, CURVE) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(CURVE, list(reversed(CURVE))) == pytest.approx(0.0, abs=1e-9)  # order-free


@pytest.mark.parametrize("factor, expected", [(0.8, -20.0), (1.25, 25.0), (0.5, -50.0)])
def test_bd_rate_of_scaled_rates(factor, expected):
    assert bd_rate(CURVE, scaled(CURVE, factor)) == pytest.approx(expected, abs=0.1)
    # and the reverse direction is the inverse ratio
    assert bd_rate(scaled(CURVE, factor), CURVE) == pytest.approx((1 / factor - 1) * 100, abs=0.1)


def test_bd_rate_matches_classic_polyfit_implementation():
    other = [(b * (0.7 + 0.2 * b), p + 0.3) for b, p in CURVE]  # a differently shaped curve
    (ra, pa), (rb, pb) = (np.array(c).T for c in (CURVE, other))
    fa, fb = np.polyint(np.polyfit(pa, np.log(ra), 3)), np.polyint(np.polyfit(pb, np.log(rb), 3))
    lo, hi = max(pa.min(), pb.min()), min(pa.max(), pb.max())
    diff = (np.polyval(fb, hi) - np.polyval(fb, lo) - np.polyval(fa, hi) + np.polyval(fa, lo)) / (
        hi - lo
    )
    assert bd_rate(CURVE, other) == pytest.approx((math.exp(diff) - 1) * 100, rel=1e-6)


def test_bd_rate_none_for_disjoint_or_too_short_curves():
    low = [(0.1, 20.0), (0.2, 22.0), (0.3, 23.0), (0.4, 24.0)]
    high = [(1.0, 30.0), (1.2, 31.0), (1.4, 32.0), (1.6, 33.0)]
    assert bd_rate(low, high) is None
    assert bd_rate(CURVE, [(0.5, 29.0)]) is None
    assert bd_rate(CURVE, []) is None


def test_bd_rate_few_points_uses_lower_degree():
    two = [CURVE[2], CURVE[6]]
    assert bd_rate(two, scaled(two, 0.8)) == pytest.approx(-20.0, abs=0.1)
    three = CURVE[1:8:3]
    assert bd_rate(CURVE, scaled(three, 0.8)) == pytest.approx(-20.0, abs=2.0)


def test_bd_rate_bpp_range_restricts_points():
    # below 1 bpp curve B is the 0.8-scaled curve; above, it needs 3x the bits (beyond 3 bpp)
    b = [(r * 0.8, p) if r < 1.0 else (r * 3.0, p) for r, p in CURVE]
    assert bd_rate(CURVE, b) > -10.0
    assert bd_rate(CURVE, b, bpp_range=(0.1, 1.0)) == pytest.approx(-20.0, abs=0.5)
    assert bd_rate(CURVE, CURVE, bpp_range=(5.0, 9.0)) is None


def test_bd_table_has_every_ordered_pair():
    table = bd_table({"a": CURVE, "b": scaled(CURVE, 0.8), "c": [(5.0, 50.0), (6.0, 51.0)]})
    assert set(table) == {(x, y) for x in "abc" for y in "abc" if x != y}
    assert table[("a", "b")] == pytest.approx(-20.0, abs=0.1)
    assert table[("b", "a")] == pytest.approx(25.0, abs=0.1)
    assert table[("a", "c")] is None


def test_psnr_at_interpolates_in_log_bpp():
    curve = [(0.5, 30.0), (0.125, 20.0), (2.0, 40.0)]  # unsorted on purpose
    assert psnr_at(curve, 0.25) == pytest.approx(
        20.0 + 10.0 * 0.5
    )  # halfway in log2 between 1/8 and 1/2
    assert psnr_at(curve, 1.0) == pytest.approx(35.0)
    assert psnr_at(curve, 0.5) == pytest.approx(30.0)
    assert psnr_at(curve, 2.0) == pytest.approx(40.0)
    assert psnr_at(curve, 0.1) is None
    assert psnr_at(curve, 2.5) is None
    assert psnr_at([], 1.0) is None


def gradient_noise(width, height, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 200 + 30
    return np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def small_images(tmp_path):
    paths = []
    for i, (w, h) in enumerate([(64, 48), (48, 64)]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(gradient_noise(w, h, i), "RGB").save(path)
        paths.append(path)
    return paths


def test_evaluate_baseline_jpeg_real_bitstream(small_images):
    settings = [10, 50, 90]
    points = evaluate_baseline("jpeg", small_images, progress=False, settings=settings)
    assert [p["setting"] for p in points] == settings
    assert set(points[0]) == {
        "setting",
        "bpp",
        "psnr",
        "ms_ssim",
        "encode_s",
        "decode_s",
        "entropy_bpp",
    }
    assert all(p["entropy_bpp"] is None for p in points)  # no model cross-entropy for JPEG

    # independent recomputation of bpp and PSNR at quality 50
    bpps, psnrs = [], []
    for path in small_images:
        image = Image.open(path).convert("RGB")
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=50)
        bpps.append(len(buf.getvalue()) * 8 / (image.width * image.height))
        decoded = np.asarray(
            Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float64
        )
        mse = np.mean((decoded - np.asarray(image, dtype=np.float64)) ** 2)
        psnrs.append(10 * math.log10(255**2 / mse))
    assert points[1]["bpp"] == pytest.approx(np.mean(bpps), rel=1e-12)
    assert points[1]["psnr"] == pytest.approx(np.mean(psnrs), rel=1e-9)

    assert points[0]["bpp"] < points[1]["bpp"] < points[2]["bpp"]
    assert points[0]["psnr"] < points[1]["psnr"] < points[2]["psnr"]
    assert all(p["ms_ssim"] is None for p in points)  # images too small for MS-SSIM
    assert all(p["encode_s"] >= 0 and p["decode_s"] >= 0 for p in points)


def test_available_codecs_reports_unknown_instead_of_raising():
    usable, unavailable = available_codecs(["jpeg", "nonexistent"])
    assert "jpeg" in usable
    assert "nonexistent" not in usable
    assert "nonexistent" in unavailable
    reason = unavailable["nonexistent"]
    assert isinstance(reason, str) and reason and "\n" not in reason


def test_available_codecs_reports_missing_library(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] in ("pillow_heif", "imagecodecs"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    usable, unavailable = available_codecs(["heic", "jxl"])
    assert usable == {}
    assert set(unavailable) == {"heic", "jxl"}
    assert all("not installed" in r and "\n" not in r for r in unavailable.values())


def test_plot_rd_writes_png(tmp_path):
    path = tmp_path / "rd.png"
    plot_rd(
        {"jpeg": CURVE, "better": scaled(CURVE, 0.8)},
        path,
        "test",
        published={"paper": scaled(CURVE, 0.7)},
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.width > 100 and im.height > 100


def test_load_published_reads_compressai_format(tmp_path):
    def write(stem, name, bpp, psnr_rgb):
        results = {
            "bpp": bpp,
            **({"psnr-rgb": psnr_rgb} if psnr_rgb else {"ms-ssim-db-rgb": [1.0] * len(bpp)}),
        }
        (tmp_path / f"{stem}.json").write_text(json.dumps({"name": name, "results": results}))

    write("compressai-mbt2018_mse_cpu", "mbt2018", [0.5, 0.2], [33.0, 29.0])
    write("compressai-mbt2018_mse_cuda", "mbt2018", [0.5, 0.2], [99.0, 99.0])
    write("compressai-mbt2018_ms-ssim_cpu", "mbt2018", [0.4, 0.1], [30.0, 26.0])
    write("bpg_444_x265_ycbcr", "BPG 8b 444 x265 ycbcr", [0.3, 0.6], [30.0, 33.0])
    write("paper-elic2022_ms-ssim", "elic2022", [0.1, 0.2], None)
    (tmp_path / "broken.json").write_text("{not json")

    everything = load_published(tmp_path)
    assert set(everything) == {"mbt2018", "mbt2018_ms-ssim", "bpg"}
    assert everything["mbt2018"] == [(0.2, 29.0), (0.5, 33.0)]  # sorted by bpp, CPU file kept

    chosen = load_published(tmp_path, ["bpg", "mbt2018", "missing"])
    assert list(chosen) == ["bpg", "mbt2018"]
