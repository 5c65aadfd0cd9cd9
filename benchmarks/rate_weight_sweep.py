"""How far the encoder's rate-aware assignment strength moves one model along the RD curve.

The decoder does not depend on the assignment strength, so quality levels can share
weights. Run on held-out photos (not Kodak) to choose the levels in models/zoo.json:

    python benchmarks/rate_weight_sweep.py --model models/X.safetensors --data-dir DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dqcodec.codec import Codec
from dqcodec.datasets import list_images
from dqcodec.image_io import open_image
from dqcodec.metrics import bits_per_pixel, psnr
from dqcodec.training import split_train_val
from dqcodec.zoo import read_model_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="a training folder: its held-out validation split is used")
    parser.add_argument("--weights", default="0,0.02,0.05,0.1,0.2,0.4,0.8")
    parser.add_argument("--count", type=int, default=8)
    args = parser.parse_args()

    _, val = split_train_val(list_images(args.data_dir), 16)
    images = [open_image(p) for p in val[: args.count]]
    model = read_model_file(args.model)
    print(f"{'rate weight':>12}{'bpp':>9}{'PSNR':>8}   ({len(images)} held-out photos)")
    for weight in (float(w) for w in args.weights.split(",")):
        codec = Codec(model, rate_weight=weight)
        bpp, quality = [], []
        for image in images:
            data = codec.encode(image)
            bpp.append(bits_per_pixel(len(data), image))
            quality.append(psnr(image, codec.decode(data)))
        print(f"{weight:>12.3f}{np.mean(bpp):>9.4f}{np.mean(quality):>8.2f}")


if __name__ == "__main__":
    main()
