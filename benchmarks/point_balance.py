"""How much each rate point of a variable-rate model moves its shared transforms, with the
plain loss and with `dqcodec train --balance-points`.

For every rate point, one batch of training crops is coded at that point; the gradient of
the batch's mean RD cost (255² λ MSE + bpp) on the analysis and synthesis transforms is
measured, unweighted and weighted as PointBalance weights it (the mean of the points' costs
over the point's own). Printed: each point's share of the summed gradient norms.

    python benchmarks/point_balance.py [--model models/dq-vr.safetensors] [--photos DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dqcodec.entropy_models.calibration import training_photos
from dqcodec.training.trainer import load_rgb, rd_loss
from dqcodec.zoo import read_model_file

REPO = Path(__file__).resolve().parents[1]


def crops(paths: list[Path], size: int) -> torch.Tensor:
    """The centre crop of each photo, as a batch in [0, 1]."""
    batch = []
    for path in paths:
        image = load_rgb(path)
        _, h, w = image.shape
        top, left = (h - size) // 2, (w - size) // 2
        batch.append(image[:, top : top + size, left : left + size].float() / 255)
    return torch.stack(batch)


def transform_gradient_norm(model, x: torch.Tensor, point: int) -> tuple[float, float]:
    """(mean RD cost, norm of its gradient on g_a and g_s) at one rate point."""
    model.zero_grad(set_to_none=True)
    points = torch.full((x.shape[0],), point)
    lmbda = torch.tensor(model.config.point_lambdas())[points]
    out = model(x, points)
    loss = rd_loss(out, x, lmbda, commitment=0.0)
    loss["loss"].backward()
    grads = [p.grad for m in (model.g_a, model.g_s) for p in m.parameters() if p.grad is not None]
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    return float(loss["cost"].mean()), float(norm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "dq-vr.safetensors")
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "train")
    parser.add_argument("--count", type=int, default=8, help="photos in the batch")
    parser.add_argument("--crop", type=int, default=256)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = read_model_file(args.model).train()
    x = crops(training_photos(args.photos, args.count), args.crop)
    rows = [transform_gradient_norm(model, x, p) for p in range(model.config.rate_points)]
    costs = torch.tensor([cost for cost, _ in rows])
    plain = torch.tensor([norm for _, norm in rows])
    balanced = plain * costs.mean() / costs
    print(f"{args.model.name}: {args.count} training crops of {args.crop} px")
    print(f"{'point':>5} {'lambda':>8} {'RD cost':>8} {'plain share':>12} {'balanced share':>15}")
    for p, lmbda in enumerate(model.config.point_lambdas()):
        print(
            f"{p:>5} {lmbda:>8g} {costs[p]:>8.3f} {plain[p] / plain.sum():>12.1%} "
            f"{balanced[p] / balanced.sum():>15.1%}"
        )


if __name__ == "__main__":
    main()
