"""Rate–distortion curves: Bjøntegaard delta rate, interpolation, plots, published anchors.

A curve is a sequence of ``(bpp, psnr)`` pairs (any order). Pure numpy; matplotlib only for plots.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

Curve = Sequence[tuple[float, float]]


def _clean(curve: Curve, bpp_range: tuple[float, float] | None = None) -> np.ndarray:
    """-> (n, 2) array of finite points with bpp > 0 (and inside bpp_range), sorted by bpp."""
    points = np.asarray([(float(b), float(p)) for b, p in curve], dtype=np.float64).reshape(-1, 2)
    keep = np.isfinite(points).all(axis=1) & (points[:, 0] > 0)
    if bpp_range is not None:
        lo, hi = bpp_range
        keep &= (points[:, 0] >= lo) & (points[:, 0] <= hi)
    points = points[keep]
    return points[np.argsort(points[:, 0], kind="stable")]


def _log_rate_integral(points: np.ndarray, lo: float, hi: float) -> float:
    """Integral over PSNR in [lo, hi] of a polynomial fit of log(rate) against PSNR."""
    degree = min(3, len(points) - 1)
    fit = np.polynomial.Polynomial.fit(points[:, 1], np.log(points[:, 0]), degree)
    antiderivative = fit.integ()
    return float(antiderivative(hi) - antiderivative(lo))


def bd_rate(
    curve_a: Curve, curve_b: Curve, bpp_range: tuple[float, float] | None = None
) -> float | None:
    """Bjøntegaard delta rate of B relative to A, in percent (negative: B needs fewer bits).

    log(rate) is fitted as a cubic in PSNR (degree min(3, n-1) for curves of 2–3 points) and the
    difference averaged over the PSNR interval both curves cover. With ``bpp_range`` only points
    inside it are used. None when a curve has fewer than 2 points or the PSNR ranges do not overlap.
    """
    a, b = _clean(curve_a, bpp_range), _clean(curve_b, bpp_range)
    if len(a) < 2 or len(b) < 2:
        return None
    lo = max(a[:, 1].min(), b[:, 1].min())
    hi = min(a[:, 1].max(), b[:, 1].max())
    if not hi > lo:
        return None
    mean_diff = (_log_rate_integral(b, lo, hi) - _log_rate_integral(a, lo, hi)) / (hi - lo)
    return float((math.exp(mean_diff) - 1.0) * 100.0)


def psnr_at(curve: Curve, bpp: float) -> float | None:
    """PSNR at ``bpp``, piecewise linear in log(bpp); None outside the curve's bpp range."""
    points = _clean(curve)
    if len(points) == 0 or not (bpp > 0) or not math.isfinite(bpp):
        return None
    rates = points[:, 0]
    if bpp < rates[0] or bpp > rates[-1]:
        return None
    return float(np.interp(math.log(bpp), np.log(rates), points[:, 1]))


def bd_table(
    curves: Mapping[str, Curve], bpp_range: tuple[float, float] | None = None
) -> dict[tuple[str, str], float | None]:
    """BD-rate of every curve b relative to every other curve a: ``{(a, b): percent or None}``."""
    return {
        (a, b): bd_rate(curves[a], curves[b], bpp_range) for a in curves for b in curves if a != b
    }


def plot_rd(
    curves: Mapping[str, Curve],
    path: str | Path,
    title: str,
    published: Mapping[str, Curve] | None = None,
    max_bpp: float = 1.6,
) -> Path:
    """PSNR against bpp, solid line and markers per measured codec, dashed for published; PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    visible: list[float] = []

    def draw(name: str, curve: Curve, dashed: bool) -> None:
        points = _clean(curve)
        if len(points) == 0:
            return
        ax.plot(
            points[:, 0],
            points[:, 1],
            linestyle="--" if dashed else "-",
            marker="x" if dashed else "o",
            markersize=4,
            linewidth=1.2 if dashed else 1.6,
            label=f"{name} (published)" if dashed else name,
        )
        visible.extend(points[points[:, 0] <= max_bpp, 1].tolist())

    for name, curve in curves.items():
        draw(name, curve, dashed=False)
    for name, curve in (published or {}).items():
        draw(name, curve, dashed=True)

    ax.set_xlim(0, max_bpp)
    if visible:
        low, high = min(visible), max(visible)
        pad = max(0.5, 0.03 * (high - low))
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (RGB, dB)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _published_key(stem: str) -> str:
    """CompressAI result file name -> short curve name.

    ``compressai-mbt2018_mse_cpu`` -> ``mbt2018``, ``compressai-mbt2018_ms-ssim_cpu`` ->
    ``mbt2018_ms-ssim``, ``paper-elic2022_mse`` -> ``paper-elic2022``,
    ``bpg_444_x265_ycbcr`` -> ``bpg``, ``vtm`` -> ``vtm``.
    """
    key = stem.removeprefix("compressai-")
    for suffix in ("_cpu", "_cuda"):
        key = key.removesuffix(suffix)
    key = key.removesuffix("_mse")
    if key.startswith("bpg"):
        key = "bpg"
    return key


def load_published(
    folder: str | Path, names: Iterable[str] | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Read CompressAI result JSON files in ``folder``.

    The files look like ``{"name", "results": {"bpp", "psnr-rgb"}}``. Keys are short names from
    the file names (see ``_published_key``: ``bmshj2018-hyperprior``, ``mbt2018``, ``bpg``,
    ``vtm``, ``paper-mbt2018`` ...); where CPU and CUDA files give the same name
    the CPU one is kept. Files without PSNR (MS-SSIM-only papers) or not in this format are skipped.
    ``names`` keeps only the curves whose key, file stem or JSON "name" matches (case-insensitive),
    in the order given; names matching nothing are left out.
    """
    folder = Path(folder)
    found: dict[str, tuple[set[str], list[tuple[float, float]]]] = {}
    for file in sorted(folder.glob("*.json")):  # sorted: *_cpu before *_cuda
        try:
            data = json.loads(file.read_text())
            results = data["results"]
            pairs = [
                (float(b), float(p))
                for b, p in zip(results["bpp"], results["psnr-rgb"], strict=True)
            ]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not pairs:
            continue
        key = _published_key(file.stem)
        if key in found:
            continue
        aliases = {key.lower(), file.stem.lower()}
        if isinstance(data.get("name"), str):
            aliases.add(data["name"].strip().lower())
        found[key] = (aliases, sorted(pairs))
    if names is None:
        return {key: curve for key, (_, curve) in found.items()}
    selected: dict[str, list[tuple[float, float]]] = {}
    for wanted in names:
        wanted = wanted.strip().lower()
        exact = [key for key in found if key.lower() == wanted]
        matches = exact or [key for key, (aliases, _) in found.items() if wanted in aliases]
        for key in matches:
            selected.setdefault(key, found[key][1])
    return selected
