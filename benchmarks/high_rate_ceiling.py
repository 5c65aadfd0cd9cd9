"""Where the upper quality levels' PSNR ceiling comes from, and what a finer quantizer of the
bottom latent could buy, measured before building one.

For each level (default 6-9) on centre crops of held-out photos, with the analysis
transform's features (effort 0):
  coded      the level's DQ codes: bpp from the prior's cross-entropy, PSNR of the synthesis;
  unquant.   the synthesis of the unquantized bottom latent (top level coded): the ceiling
             that no quantizer of the bottom latent can pass;
  +res D     the codes plus a uniform scalar refinement of the residual z - y_hat with step D
             (in the quantizer's scaled units): PSNR, and bpp plus the residual symbols'
             zeroth-order entropy per channel (a conditional model would need fewer bits);
and the codebooks' saturation: the share of codes in use and of latent values outside the
codebook's box. A refinement is worth building where its dB per bpp beats the step to the
next level.

    python benchmarks/high_rate_ceiling.py --data-dir DIR [--levels 6-9] [--crop 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from dqcodec.codec import load_codec
from dqcodec.evaluation.datasets import list_images
from dqcodec.image_io import open_image, to_tensor

STEPS = (1.0, 0.5, 0.25)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    mse = ((x.clamp(0, 1) * 255).round() - (y * 255).round()).pow(2).mean()
    return float(10 * torch.log10(255**2 / mse))


def entropy_bits(symbols: torch.Tensor) -> float:
    """Zeroth-order entropy of integer symbols (B, C, H, W), per channel, summed over all."""
    total = 0.0
    for channel in symbols.transpose(0, 1).reshape(symbols.shape[1], -1):
        _, counts = torch.unique(channel, return_counts=True)
        p = counts.double() / counts.sum()
        total += float(-(counts * torch.log2(p)).sum())
    return total


@torch.no_grad()
def encoded(model, point: int, crops: torch.Tensor, rate_weight: float | None = None) -> dict:
    """The crops coded at one rate point with the analysis transform's features (effort 0):
    the points "point" (B,), the bottom latent "z", its codes' latent "y_hat", the top
    level's conditioning "cond", the codes "indices" and their bits under the prior "bits"."""
    p = model._points(crops.shape[0], point, crops.device)
    levels = model._through_levels(
        model.analyse(crops),
        p,
        lambda lv, latent, cond, above: lv.assign_straight_through(latent, cond, p, rate_weight),
    )
    cond = levels["cond"]
    bits = sum(
        float(lv.information(levels[name]["indices"], c, p))
        for name, lv, c in (
            ("top", model.top, model._unconditioned(levels["latents"]["top"])),
            ("bottom", model.bottom, cond),
        )
    )
    return {
        "point": p,
        "z": levels["latents"]["bottom"],
        "y_hat": levels["bottom"]["y_hat"],
        "cond": cond,
        "indices": levels["bottom"]["indices"],
        "bits": bits,
    }


@torch.no_grad()
def measure(level: int, crops: torch.Tensor) -> dict:
    codec = load_codec(level)
    model = codec.model
    codes = encoded(model, codec.rate_point, crops, codec.rate_weight)
    gain = model._gain("bottom", codes["point"])
    cond, z, y_hat, bits = codes["cond"], codes["z"], codes["y_hat"], codes["bits"]
    pixels = crops.shape[0] * crops.shape[2] * crops.shape[3]

    def image(latent):
        return model.synthesise(torch.cat([model._unscaled(latent, gain), cond], 1))

    books = model.bottom.quantizer.codebooks  # (G, K, d)
    low, high = books.amin(1), books.amax(1)  # (G, d) box of each group's codebook
    vectors = model.bottom.quantizer.split(z)  # (B, G, H, W, d)
    outside = (vectors < low[None, :, None, None]) | (vectors > high[None, :, None, None])
    used = [
        len(torch.unique(codes["indices"][:, g])) / books.shape[1] for g in range(books.shape[0])
    ]
    row = {
        "level": level,
        "bpp": bits / pixels,
        "psnr": psnr(image(y_hat), crops),
        "unquantized": psnr(image(z), crops),
        "codes_used": float(np.mean(used)),
        "outside_box": float(outside.float().mean()),
        "refined": [],
    }
    for step in STEPS:
        symbols = torch.round((z - y_hat) / step)
        extra = entropy_bits(symbols.long()) / pixels
        refined = psnr(image(y_hat + step * symbols), crops)
        row["refined"].append({"step": step, "bpp": row["bpp"] + extra, "psnr": refined})
    return row


def centre_crops(folder: Path, size: int) -> torch.Tensor:
    crops = []
    for path in list_images(folder):
        x = to_tensor(open_image(path).convert("RGB"))
        h, w = x.shape[2:]
        if min(h, w) >= size:
            top, left = (h - size) // 2, (w - size) // 2
            crops.append(x[:, :, top : top + size, left : left + size])
    return torch.cat(crops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--levels", default="6-9")
    parser.add_argument("--crop", type=int, default=256)
    args = parser.parse_args()
    first, last = (int(v) for v in args.levels.split("-"))
    crops = centre_crops(args.data_dir, args.crop)
    print(f"{len(crops)} centre crops of {args.crop} px from {args.data_dir.name}, effort 0")
    head = f"{'level':>5} {'bpp':>7} {'PSNR':>6} {'unquant.':>8} {'codes used':>10} {'outside':>8}"
    head += "".join(f" {'+res ' + format(s, 'g'):>15}" for s in STEPS)
    print(head)
    previous = None
    for level in range(first, last + 1):
        r = measure(level, crops)
        line = (
            f"{level:>5} {r['bpp']:>7.3f} {r['psnr']:>6.2f} {r['unquantized']:>8.2f} "
            f"{r['codes_used']:>10.1%} {r['outside_box']:>8.2%}"
        )
        for ref in r["refined"]:
            line += f" {ref['bpp']:>7.3f} {ref['psnr']:>6.2f}"
        print(line)
        if previous is not None:
            slope = (r["psnr"] - previous["psnr"]) / (r["bpp"] - previous["bpp"])
            print(f"{'':>5} level {level - 1} -> {level}: {slope:.2f} dB per bpp")
        for ref in r["refined"]:
            gain = (ref["psnr"] - r["psnr"]) / max(ref["bpp"] - r["bpp"], 1e-9)
            print(f"{'':>5} +res {ref['step']:g}: {gain:.2f} dB per bpp")
        previous = r


if __name__ == "__main__":
    main()
