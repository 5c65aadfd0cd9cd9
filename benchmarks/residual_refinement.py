"""A finer quantizer where the rate is high, built and measured at small scale on the CPU: a
scalar refinement of the bottom latent's residual r = z - y_hat with a conditional Gaussian
model, used by the upper rate points of dq-vr only.

The refinement: per rate point p and bottom channel c a learned step D[p, c] (in the
quantizer's scaled units); the decoder adds D q to the codes' latent, q = round(r / D), coded
with a Gaussian of mean 0 whose scale (of r, divided by D for q) a small zero-initialised
network predicts from the codes' latent and the top level's conditioning. The steps start at
INIT_STEP, several times the codebooks' extent, so q = 0 everywhere: the refined path starts as
the same function (the same decoded image) and q costs ~0 bits. Points below --points never
refine.

The fine-tune: random crops of the training photos (the held-out split left out) at the upper
points, loss bpp + 255² λ_p MSE with the model's own λ, each point's loss weighted by the
inverse of its running RD cost (trainer.PointBalance); q's rate from additive uniform noise
(GaussianConditional's training likelihood), its distortion through straight-through rounding;
the prior and the codebooks stay as they are. Runs from dq-vr (--variants), on the same crops:
  control     the synthesis g_s alone, at the upper points (what fine-tuning alone does);
  refined     g_s and the refinement, at the upper points;
  encoder     g_s, the refinement and the analysis g_a, at the upper points;
  all-points  g_s and the refinement, at every point up to the highest (the lower points
              without refinement, so that the shared g_s keeps serving them).
Measured with high_rate_ceiling's machinery on centre crops of the held-out photos, effort 0,
at each upper point: bpp of the DQ codes (the prior's cross-entropy) plus the Gaussian's bits
of the integer q, coded PSNR (without, then with the refinement), the unquantized PSNR (the
synthesis of z), the share of nonzero q and the median step; and the coded PSNR of the lower
points, which share g_s.

    python benchmarks/heldout_photos.py HELDOUT
    OMP_NUM_THREADS=1 python benchmarks/residual_refinement.py --data-dir HELDOUT \
        --steps 300 --batch 4 --variants control,refined,encoder,all-points --workdir DIR

(--batch crops per step for every four points trained: 4 at the upper points, 8 at all.)
A --workdir that already holds a run's weights (same steps, batch, crop and seed) measures them
again without training.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from compressai.entropy_models import GaussianConditional
from high_rate_ceiling import centre_crops, encoded, measure, psnr
from torch import Tensor

from dqcodec import zoo
from dqcodec.evaluation.datasets import list_images
from dqcodec.models.dq import DQModel
from dqcodec.training.trainer import (
    CropSampler,
    PointBalance,
    learning_rate,
    rd_loss,
    set_learning_rate,
    split_train_val,
)

REPO = Path(__file__).resolve().parents[1]
TRAIN_DATA = REPO.parent / "shared" / "data" / "train"
MODEL_LEVEL = 9  # the shipped level whose weights file is dq-vr
# The bottom codebooks span about 13 scaled units (|code| <= 6.7): q stays 0 until |r| > 32.
INIT_STEP = 64.0
INIT_SCALE = 0.25  # the Gaussian's starting scale of r (q's is that over the step)
HIDDEN = 64  # channels of the scale network
# learning rates relative to the transforms': the per-point log-steps and log-scales move by
# nats, the scale network from zero
LOG_LR_SCALE = 2000.0
NET_LR_SCALE = 20.0


class ResidualRefinement(nn.Module):
    """y' = y_hat + D q, q = round((z - y_hat) / D), at the rate points in `upper`; elsewhere
    y' = y_hat and q costs nothing."""

    def __init__(self, points: int, upper: list[int], channels: int, cond_channels: int):
        super().__init__()
        self.log_step = nn.Parameter(torch.full((points, channels), math.log(INIT_STEP)))
        self.log_scale = nn.Parameter(torch.full((points, channels), math.log(INIT_SCALE)))
        self.scale_net = nn.Sequential(
            nn.Conv2d(channels + cond_channels, HIDDEN, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(HIDDEN, channels, 3, padding=1),
        )
        nn.init.zeros_(self.scale_net[-1].weight)
        nn.init.zeros_(self.scale_net[-1].bias)
        used = torch.zeros(points, dtype=torch.bool)
        used[upper] = True
        self.register_buffer("used", used)
        self.gaussian = GaussianConditional(None)

    def steps(self, point: Tensor) -> Tensor:
        return self.log_step[point].exp()[:, :, None, None]

    def forward(self, z: Tensor, y_hat: Tensor, cond: Tensor, point: Tensor) -> dict:
        """The refined latent "y", q's bits per sample "bits" (B,) and "q" itself; training:
        q's rate under additive noise, its value rounded straight-through."""
        step = self.steps(point)
        log_scale = self.log_scale[point][:, :, None, None] + self.scale_net(
            torch.cat([y_hat, cond], 1)
        )
        scaled = (z - y_hat) / step
        _, likelihood = self.gaussian(scaled, log_scale.exp() / step, training=self.training)
        q = scaled + (torch.round(scaled) - scaled).detach() if self.training else scaled.round()
        used = self.used[point]
        bits = -torch.log2(likelihood).flatten(1).sum(1) * used
        y = torch.where(used[:, None, None, None], y_hat + step * q, y_hat)
        return {"y": y, "bits": bits, "q": q}


def load_model() -> DQModel:
    """A fresh copy of dq-vr, as a Codec holds it."""
    model = zoo.read_model_file(zoo.shipped_models()[MODEL_LEVEL].weights)
    return model.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def new_refinement(model: DQModel, upper: list[int]) -> ResidualRefinement:
    config = model.config
    return ResidualRefinement(config.rate_points, upper, config.bottom.channels, config.width)


def shipped_level(point: int) -> int | None:
    """The quality level that codes with dq-vr's rate point `point`, if one does."""
    weights = zoo.shipped_models()[MODEL_LEVEL].weights
    levels = {m.rate_point: q for q, m in zoo.shipped_models().items() if m.weights == weights}
    return levels.get(point)


def level_name(point: int) -> str:
    level = shipped_level(point)
    return "-" if level is None else str(level)


# --- measurement -------------------------------------------------------------------------


@torch.no_grad()
def measure_point(
    model: DQModel, codes: dict, crops: Tensor, refinement: ResidualRefinement | None
) -> dict:
    p, cond = codes["point"], codes["cond"]
    gain = model._gain("bottom", p)
    pixels = crops.shape[0] * crops.shape[2] * crops.shape[3]

    def image(latent: Tensor) -> Tensor:
        return model.synthesise(torch.cat([model._unscaled(latent, gain), cond], 1))

    coded = image(codes["y_hat"])
    row = {
        "bpp": codes["bits"] / pixels,
        "q_bpp": 0.0,
        "psnr": psnr(coded, crops),
        "refined": None,
        "unquantized": psnr(image(codes["z"]), crops),
    }
    if refinement is not None:
        refinement.eval()
        out = refinement(codes["z"], codes["y_hat"], cond, p)
        refined = image(out["y"])
        row.update(
            q_bpp=float(out["bits"].sum()) / pixels,
            refined=psnr(refined, crops),
            nonzero=float((out["q"] != 0).float().mean()),
            same_image=bool(torch.equal(refined, coded)),
            step=float(refinement.steps(p[:1]).median()),
        )
    return row


def measure_all(
    model: DQModel,
    crops: Tensor,
    upper: list[int],
    lower: list[int],
    refinement: ResidualRefinement | None,
    encoder_changed: bool,
    cache: dict,
) -> dict:
    """Rows of the upper and lower points; the codes are cached while the encoder is dq-vr's."""
    rows = {}
    for point in lower + upper:
        codes = cache.get(point) if not encoder_changed else None
        if codes is None:
            codes = encoded(model, point, crops)
        if not encoder_changed:
            cache[point] = codes
        rows[point] = measure_point(model, codes, crops, refinement if point in upper else None)
    return rows


# --- fine-tuning -------------------------------------------------------------------------


def trainable_groups(
    model: DQModel, refinement: ResidualRefinement | None, encoder: bool
) -> list[dict]:
    transforms = [model.g_s] + ([model.g_a] if encoder else [])
    for module in transforms:
        module.requires_grad_(True)
    groups = [{"params": [p for m in transforms for p in m.parameters()], "lr_scale": 1.0}]
    if refinement is not None:
        logs = [refinement.log_step, refinement.log_scale]
        groups.append({"params": logs, "lr_scale": LOG_LR_SCALE})
        groups.append({"params": list(refinement.scale_net.parameters()), "lr_scale": NET_LR_SCALE})
    return groups


def training_forward(
    model: DQModel,
    refinement: ResidualRefinement | None,
    x: Tensor,
    points: Tensor,
    encoder: bool,
) -> dict:
    """The trainer's forward (codes assigned with the trained strength, the prior's bits),
    with q's refinement and bits added at the bottom."""
    with torch.set_grad_enabled(encoder):
        levels = model._through_levels(
            model.analyse(x), points, lambda lv, latent, cond, above: lv(latent, cond, points)
        )
    cond, bottom = levels["cond"], levels["bottom"]
    y, bits = bottom["y_hat"], levels["top"]["sample_bits"] + bottom["sample_bits"]
    q_bits = torch.zeros_like(bits)
    if refinement is not None:
        out = refinement(levels["latents"]["bottom"], y, cond, points)
        y, q_bits = out["y"], out["bits"]
    y = model._unscaled(y, model._gain("bottom", points))
    return {
        "x_hat": model.synthesise(torch.cat([y, cond], 1)),
        "sample_bits": bits + q_bits,
        "q_bits": q_bits,
        "commitment": levels["top"]["commitment"] + bottom["commitment"],
    }


def fine_tune(
    model: DQModel,
    refinement: ResidualRefinement | None,
    sampler: CropSampler,
    points_trained: list[int],
    args: argparse.Namespace,
    encoder: bool,
) -> float:
    """Trains in place, `--batch` crops per step for every 4 points trained (each point the
    same number); returns the wall time in seconds."""
    torch.manual_seed(args.seed)
    sampler.rng.seed(args.seed)
    optimizer = torch.optim.Adam(trainable_groups(model, refinement, encoder), lr=args.lr)
    trained = [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    if refinement is not None:
        refinement.train()
    lambdas = torch.tensor(model.config.point_lambdas())
    batch = math.ceil(args.batch * len(points_trained) / 4)
    index = torch.arange(len(points_trained)).repeat(math.ceil(batch / len(points_trained)))
    index = index[:batch]
    points = torch.tensor(points_trained)[index]
    balance = PointBalance(len(points_trained))
    started = time.time()
    for step in range(args.steps):
        set_learning_rate(optimizer, learning_rate(step, args.lr, args.warmup, args.steps))
        x = sampler.batch(args.crop, batch).float() / 255.0
        out = training_forward(model, refinement, x, points, encoder)
        r = rd_loss(out, x, lambdas[points], args.commitment, balance.weights(index))
        optimizer.zero_grad(set_to_none=True)
        r["loss"].backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        balance.update(index, r["cost"])
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            q_bpp = float(out["q_bits"].detach().mean()) / (args.crop * args.crop)
            steps = "" if refinement is None else f", median step {median_steps(refinement)}"
            print(
                f"  step {step + 1}: loss {r['loss'].item():.4f} bpp {r['bpp'].item():.3f} "
                f"(q {q_bpp:.3f}) psnr {r['psnr'].item():.2f}{steps} "
                f"({time.time() - started:.0f} s)",
                flush=True,
            )
    model.eval().requires_grad_(False)
    return time.time() - started


def median_steps(refinement: ResidualRefinement) -> str:
    """Each refining point's median step."""
    steps = refinement.log_step.detach()[refinement.used].exp().median(1).values
    return " ".join(f"{float(s):.3g}" for s in steps)


@dataclass(frozen=True)
class Variant:
    name: str
    refine: bool  # the refinement is added and trained
    encoder: bool  # g_a trains too
    all_points: bool  # the points below the upper ones train too (without refinement)

    def describe(self) -> str:
        trained = "g_s" + (", the refinement" if self.refine else "")
        trained += ", g_a" if self.encoder else ""
        at = "all points" if self.all_points else "the upper points"
        return f"{self.name}: fine-tuned {trained} at {at}"


VARIANTS = {
    "control": Variant("control", refine=False, encoder=False, all_points=False),
    "refined": Variant("refined", refine=True, encoder=False, all_points=False),
    "encoder": Variant("encoder", refine=True, encoder=True, all_points=False),
    "all-points": Variant("all-points", refine=True, encoder=False, all_points=True),
}


def run(
    variant: Variant, sampler: CropSampler, upper: list[int], args: argparse.Namespace
) -> tuple[DQModel, ResidualRefinement | None]:
    """A fine-tuned dq-vr (and refinement), trained now or read back from the workdir."""
    name = variant.name
    model = load_model()
    refinement = new_refinement(model, upper) if variant.refine else None
    path = args.workdir / f"{name}-{args.steps}x{args.batch}x{args.crop}-seed{args.seed}.pt"
    if path.exists():
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["model"])
        if refinement is not None:
            refinement.load_state_dict(state["refinement"])
        print(f"{name}: weights read back from {path.name} (trained in {state['seconds']:.0f} s)")
        return model, refinement
    points = list(range(upper[-1] + 1)) if variant.all_points else upper
    print(f"{name}: fine-tuning {args.steps} steps at points {points}, {args.crop} px crops")
    seconds = fine_tune(model, refinement, sampler, points, args, variant.encoder)
    print(f"{name}: {seconds:.0f} s wall time ({seconds / args.steps:.2f} s per step)")
    state = {"model": model.state_dict(), "seconds": seconds}
    if refinement is not None:
        state["refinement"] = refinement.state_dict()
    torch.save(state, path)
    return model, refinement


# --- report ------------------------------------------------------------------------------


def print_table(name: str, rows: dict, upper: list[int], lower: list[int]) -> None:
    print(f"\n{name}")
    print(
        f"{'point':>5} {'level':>5} {'bpp DQ':>7} {'bpp q':>6} {'bpp':>6} {'PSNR':>6} "
        f"{'refined':>7} {'unquant.':>8} {'q != 0':>7} {'step':>6} {'same image':>10}"
    )
    for point in lower + upper:
        r = rows[point]
        line = f"{point:>5} {level_name(point):>5} {r['bpp']:>7.3f}"
        if r["refined"] is None:
            line += f" {'':>6} {r['bpp']:>6.3f} {r['psnr']:>6.2f} {'':>7} {r['unquantized']:>8.2f}"
        else:
            line += (
                f" {r['q_bpp']:>6.3f} {r['bpp'] + r['q_bpp']:>6.3f} {r['psnr']:>6.2f} "
                f"{r['refined']:>7.2f} {r['unquantized']:>8.2f} {r['nonzero']:>7.2%} "
                f"{r['step']:>6.3g} {'yes' if r['same_image'] else 'no':>10}"
            )
        print(line)
    print_slopes(rows, upper)


def print_slopes(rows: dict, upper: list[int]) -> None:
    """Point-to-point steps of the upper points: dB, bpp and dB per bpp, coded and refined."""
    for kind in ("psnr", "refined"):
        if rows[upper[0]][kind] is None:
            continue
        steps = []
        for a, b in zip(upper, upper[1:]):
            bpp_a, bpp_b = (rows[p]["bpp"] + rows[p]["q_bpp"] * (kind == "refined") for p in (a, b))
            gain = rows[b][kind] - rows[a][kind]
            steps.append(
                f"{a}->{b} {gain:+.2f} dB / {bpp_b - bpp_a:+.3f} bpp "
                f"= {gain / (bpp_b - bpp_a):.2f} dB/bpp"
            )
        label = "coded" if kind == "psnr" else "refined"
        print(f"  {label:>7}: " + "; ".join(steps))


def check_before(model: DQModel, rows: dict, crops: Tensor, upper: list[int]) -> None:
    """The shipped levels through high_rate_ceiling.measure: the same figures as `rows`."""
    print("\nhigh_rate_ceiling.measure of the shipped levels (must equal the rows above)")
    for point in upper:
        level = shipped_level(point)
        if level is None:
            continue
        ref = measure(level, crops)
        ours = rows[point]
        print(
            f"  level {level}: bpp {ref['bpp']:.4f} PSNR {ref['psnr']:.4f} unquant. "
            f"{ref['unquantized']:.4f} (here {ours['bpp']:.4f} {ours['psnr']:.4f} "
            f"{ours['unquantized']:.4f})"
        )


def parse_points(text: str) -> list[int]:
    first, last = (int(v) for v in text.split("-"))
    return list(range(first, last + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="held-out photos")
    parser.add_argument("--train-dir", type=Path, default=TRAIN_DATA)
    parser.add_argument("--points", default="4-7", help="the upper points, which refine")
    parser.add_argument("--lower", default="1-3", help="lower points measured (coded only)")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--commitment", type=float, default=0.5, help="the encoder variant's commitment weight"
    )
    parser.add_argument(
        "--variants",
        default="control,refined",
        help=f"runs, in order, of {', '.join(VARIANTS)}",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="residual_refinement"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    upper, lower = parse_points(args.points), parse_points(args.lower)
    crops = centre_crops(args.data_dir, args.crop)
    print(
        f"{len(crops)} centre crops of {args.crop} px from {args.data_dir.name}, effort 0; "
        f"upper points {upper} refine, lower points {lower} share g_s"
    )
    train_paths, _ = split_train_val(list_images(args.train_dir), 16)
    held_out = {p.name for p in list_images(args.data_dir)}
    train_paths = [p for p in train_paths if p.name not in held_out]
    sampler = CropSampler(train_paths, random.Random(args.seed))
    print(f"training crops from {len(train_paths)} photos (the held-out ones left out)")

    cache: dict = {}
    model = load_model()
    before = measure_all(model, crops, upper, lower, new_refinement(model, upper), False, cache)
    print_table("dq-vr as shipped, refinement at its start", before, upper, lower)
    check_before(model, before, crops, upper)

    for name in args.variants.split(","):
        variant = VARIANTS[name]
        print()
        tuned, refinement = run(variant, sampler, upper, args)
        rows = measure_all(tuned, crops, upper, lower, refinement, variant.encoder, cache)
        print_table(variant.describe(), rows, upper, lower)
    print(f"\nweights in {args.workdir}")


if __name__ == "__main__":
    main()
