"""Training: progressive crop sizes, resumable checkpoints, held-out validation, DDP-ready."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from dqcodec.errors import DQError
from dqcodec.evaluation.datasets import list_images
from dqcodec.hardware import bf16_supported
from dqcodec.models.config import ModelConfig
from dqcodec.models.dq import DQModel
from dqcodec.zoo import read_model_file


@dataclass(frozen=True)
class Stage:
    crop: int
    batch: int
    fraction: float  # share of the total steps


DEFAULT_STAGES = (Stage(64, 24, 0.2), Stage(128, 8, 0.45), Stage(192, 4, 0.35))


@dataclass
class TrainOptions:
    data: Path
    out: Path
    steps: int = 20000
    lr: float = 3e-4
    warmup: int = 300
    stages: tuple[Stage, ...] = DEFAULT_STAGES
    val_count: int = 16
    val_every: int = 500
    checkpoint_every: int = 250
    commitment: float = 0.5
    # share of the steps over which rate-aware assignment fades in; None: 0.3 from scratch,
    # 0.02 from an `init` model (it already assigns rate-aware)
    rate_weight_ramp: float | None = None
    seed: int = 0
    config: ModelConfig = field(default_factory=ModelConfig)
    init: Path | None = None  # start from a shipped model's weights (fresh optimizer)
    init_lmbda: float | None = None  # retarget an initialised model to another trade-off
    init_rate_weight: float | None = None  # ... and to another assignment strength
    init_lambdas: tuple[float, ...] | None = None  # ... or make it a variable-rate model
    init_point: int | None = (
        None  # start a single-rate model from this point of a variable-rate `init`
    )
    device: str = "auto"  # auto: CUDA when available (one GPU per process), else CPU
    # the transforms' arithmetic: auto takes bf16 where the hardware has it (2.2x faster
    # training steps on this machine's AVX512-BF16 CPU); the prior always runs in fp32
    precision: str = "auto"
    # a wall-time budget: `steps` becomes what fits in it, timed on this device at the start
    minutes: float | None = None
    # stop this invocation after so many minutes (with a checkpoint), mid-schedule: a run split
    # over time-limited machines continues with `resume`
    stop_after: float | None = None
    # weight each rate point's loss by the inverse of its running RD cost (PointBalance)
    balance_points: bool = False
    # keep the prior as it is (to be refitted afterwards with fit-prior): its logits stay out
    # of the autograd graph, and only the transforms and codebooks train
    frozen_prior: bool = False
    # torch.compile the analysis and synthesis transforms (worth it on a GPU)
    compile: bool = False


def parse_stages(text: str) -> tuple[Stage, ...]:
    """ "64x24:0.2,128x8:0.45" -> crop 64 px, batch 24 for 20% of the steps, then ..."""
    stages = []
    for part in text.split(","):
        try:
            size, fraction = part.split(":")
            crop, batch = size.lower().split("x")
            stages.append(Stage(int(crop), int(batch), float(fraction)))
        except ValueError:
            raise DQError(
                f"bad stage {part!r}: expected CROPxBATCH:FRACTION, e.g. 128x8:0.5"
            ) from None
    if any(s.crop < 64 or s.crop % 64 or s.batch < 1 or not s.fraction > 0 for s in stages):
        raise DQError(
            "stages need crops that are positive multiples of 64, batch >= 1 and fraction > 0"
        )
    return tuple(stages)


def parse_lambdas(text: str) -> tuple[float, ...]:
    """ "0.0005,0.005,0.05" -> the rate points of a variable-rate model, lowest rate first."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise DQError(f"bad --lambdas {text!r}: expected numbers separated by commas") from None
    if len(values) < 2 or any(not v > 0 for v in values) or list(values) != sorted(set(values)):
        raise DQError("--lambdas needs two or more different positive values in increasing order")
    return values


def split_train_val(paths: list[Path], val_count: int) -> tuple[list[Path], list[Path]]:
    """A fixed, name-ordered held-out split: every k-th image goes to validation
    (at most a fifth of the folder)."""
    val_count = min(val_count, len(paths) // 5)
    if val_count <= 0:
        return paths, []
    step = max(1, len(paths) // val_count)
    val = paths[::step][:val_count]
    chosen = set(val)
    return [p for p in paths if p not in chosen], val


def load_rgb(path: Path) -> Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


class CropSampler:
    """All training images held as uint8 on the training device, loaded once; random crops
    with flips."""

    def __init__(self, paths: list[Path], rng: random.Random, device: torch.device | None = None):
        images = tqdm(paths, desc="loading images", leave=False)
        self.images = [load_rgb(p).to(device) for p in images]
        self.rng = rng
        self._usable: dict[int, list[Tensor]] = {}  # per crop size: images at least that large

    def usable(self, crop: int) -> list[Tensor]:
        if crop not in self._usable:
            self._usable[crop] = [im for im in self.images if min(im.shape[1:]) >= crop]
        if not self._usable[crop]:
            raise DQError(f"no training image is at least {crop}x{crop} pixels")
        return self._usable[crop]

    def batch(self, crop: int, size: int) -> Tensor:
        """uint8 (B, 3, crop, crop): the caller moves it to its device before making it float."""
        usable = self.usable(crop)
        out = []
        while len(out) < size:
            img = usable[self.rng.randrange(len(usable))]
            _, h, w = img.shape
            y, x = self.rng.randrange(h - crop + 1), self.rng.randrange(w - crop + 1)
            patch = img[:, y : y + crop, x : x + crop]
            if self.rng.random() < 0.5:
                patch = patch.flip(-1)
            out.append(patch)
        return torch.stack(out)


def stage_at(step: int, opts: TrainOptions) -> Stage:
    total = sum(s.fraction for s in opts.stages)
    edge = 0.0
    for s in opts.stages:
        edge += s.fraction / total * opts.steps
        if step < edge:
            return s
    return opts.stages[-1]


def learning_rate(step: int, lr: float, warmup: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to 5% of lr at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """lr for every parameter group, scaled by the group's lr_scale (see make_optimizer)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def rd_loss(
    out: dict, x: Tensor, lmbda: Tensor, commitment: float, weights: Tensor | None = None
) -> dict:
    """lmbda: the trade-off of each sample (B,); weights: each sample's share of the loss (B,),
    default equal. "cost" is each sample's RD cost, 255² λ MSE + bpp (no gradient)."""
    mse_each = (out["x_hat"] - x).pow(2).mean((1, 2, 3))
    bpp_each = out["sample_bits"] / (x.shape[2] * x.shape[3])
    cost = 255**2 * lmbda * mse_each + bpp_each
    main = cost.mean() if weights is None else (weights * cost).mean()
    loss = main + commitment * out["commitment"]
    mse = mse_each.detach().mean()
    psnr = -10 * torch.log10(mse.clamp_min(1e-10))
    return {
        "loss": loss,
        "mse": mse,
        "bpp": bpp_each.detach().mean(),
        "psnr": psnr,
        "cost": cost.detach(),
    }


class PointBalance:
    """A running RD cost per rate point; a sample's loss is weighted by the mean of these
    costs over its point's, so every point's relative improvement counts the same in the
    gradient of the shared transforms. Unweighted, a point's distortion gradient scales with
    its λ: the lowest point of dq-vr (λ 0.00015) weighs about 1/300 of its highest."""

    def __init__(self, points: int, decay: float = 0.99, state: list[float] | None = None):
        self.decay = decay
        self.cost = torch.tensor(state if state is not None else [math.nan] * points)

    def weights(self, points: Tensor) -> Tensor:
        known = self.cost[~self.cost.isnan()]
        if len(known) < len(self.cost):  # until every point has a cost: equal weights
            return torch.ones(len(points), device=points.device)
        return (known.mean() / self.cost).to(points.device)[points]

    def update(self, points: Tensor, cost: Tensor) -> None:
        points, cost = points.cpu(), cost.float().cpu()
        for p in points.unique().tolist():
            now = float(cost[points == p].mean())
            old = float(self.cost[p])
            self.cost[p] = now if math.isnan(old) else self.decay * old + (1 - self.decay) * now

    def state(self) -> list[float]:
        return self.cost.tolist()


def rd_cost(lmbda: float, psnr: float, bpp: float) -> float:
    return lmbda * 255**2 * 10 ** (-psnr / 10) + bpp


def sample_points(model: DQModel, batch: int, generator: torch.Generator) -> Tensor:
    """A rate point per sample, uniformly: every step trains every part of the range."""
    return torch.randint(model.config.rate_points, (batch,), generator=generator)


@torch.no_grad()
def validate(model: DQModel, images: list[Tensor], crop: int = 256) -> list[dict]:
    """Centre crops of the held-out images, estimated rate from the prior; one
    {lmbda, bpp, psnr} per rate point."""
    model.eval()
    device = next(model.parameters()).device
    results = []
    for point, lmbda in enumerate(model.config.point_lambdas()):
        bpp, psnr = [], []
        for img in images:
            _, h, w = img.shape
            c = min(crop, h, w) // 64 * 64
            y, x0 = (h - c) // 2, (w - c) // 2
            x = img[None, :, y : y + c, x0 : x0 + c].to(device).float() / 255.0
            out = model(x, point)
            bpp.append(float(sum(out["bits"].values()) / (c * c)))
            psnr.append(float(-10 * torch.log10((out["x_hat"].clamp(0, 1) - x).pow(2).mean())))
        results.append({"lmbda": lmbda, "bpp": float(np.mean(bpp)), "psnr": float(np.mean(psnr))})
    model.train()
    return results


def validation_score(results: list[dict]) -> float:
    """Lower is better: the RD costs of the rate points, each relative (log) so that no
    point's scale dominates."""
    return float(sum(math.log(rd_cost(r["lmbda"], r["psnr"], r["bpp"])) for r in results))


def save_checkpoint(
    path: Path,
    model: DQModel,
    optimizer,
    step: int,
    best: float | None,
    schedule_steps: int,
    balance: PointBalance | None = None,
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "schedule_steps": schedule_steps,
            "config": model.config.to_json(),
            "best_val": best,
            **({"point_cost": balance.state()} if balance is not None else {}),
        },
        tmp,
    )
    os.replace(tmp, path)


def save_best(path: Path, model: DQModel, step: int, val: list[dict]) -> None:
    """The weights a run's validation liked best, without optimizer state (what `export` reads)."""
    torch.save(
        {"model": model.state_dict(), "config": model.config.to_json(), "step": step, "val": val},
        path,
    )


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def resolve_device(name: str, rank: int = 0) -> torch.device:
    """auto/cpu/cuda; under torchrun each process takes the GPU of its LOCAL_RANK."""
    if name not in ("auto", "cpu", "cuda"):
        raise DQError(f"unknown device {name!r}: expected auto, cpu or cuda")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DQError("--device cuda: PyTorch sees no CUDA device on this machine")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())


def resolve_autocast(precision: str, device: torch.device) -> bool:
    """Whether training runs its convolutions under bf16 autocast."""
    if precision not in ("auto", "fp32", "bf16"):
        raise DQError(f"unknown precision {precision!r}: expected auto, fp32 or bf16")
    if precision == "auto":
        return bf16_supported(device)
    return precision == "bf16"


def _distributed() -> tuple[int, int]:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(opts: TrainOptions, resume: bool = False, log=print) -> Path:
    """Runs (or resumes) training; returns best.pt, or the last checkpoint when the run
    stopped (`stop_after`) before its first validation."""
    started = time.time()
    rank, world = _distributed()
    device = resolve_device(opts.device, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    bf16 = resolve_autocast(opts.precision, device)
    opts.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = opts.out / "checkpoint.pt"
    state = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    torch.manual_seed(opts.seed + rank)
    model = starting_model(opts, state, log)
    config = model.config
    model.to(device)
    if opts.frozen_prior:
        for level in (model.top, model.bottom):
            level.prior.requires_grad_(False)
        if rank == 0:
            log("the prior is frozen: its logits stay out of the graph (refit it with fit-prior)")
    if opts.compile:
        model.g_a.compile()
        model.g_s.compile()
    optimizer = make_optimizer(model, opts.lr)
    step, best = 0, None
    if state:
        model.load_state_dict(state["model"])
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        step, best = state["step"], state["best_val"]
        log(f"resumed from {ckpt_path} at step {step}")
    ddp_devices = [device.index] if device.type == "cuda" else None
    wrapped = (
        torch.nn.parallel.DistributedDataParallel(model, device_ids=ddp_devices)
        if world > 1
        else model
    )
    if world > 1 and rank == 0:
        log(f"distributed data parallel: {world} processes ({dist.get_backend()})")
    if device.type == "cuda" and rank == 0:
        log(f"training on {torch.cuda.get_device_name(device)}")
    if bf16 and rank == 0:
        log("transforms train in bf16 (autocast); the prior and the loss stay in fp32")

    train_paths, val_paths = split_train_val(list_images(opts.data), opts.val_count)
    rng = random.Random(opts.seed * 1000 + rank * 7919 + step)
    sampler = CropSampler(train_paths[rank::world], rng, device)
    val_images = [load_rgb(p) for p in val_paths]

    if opts.minutes is not None and state and "schedule_steps" in state:
        opts = dataclasses.replace(opts, steps=state["schedule_steps"])
        if rank == 0:
            log(
                f"continuing the schedule of {opts.steps} steps "
                f"that --minutes {opts.minutes:g} sized"
            )
    elif opts.minutes is not None:
        opts = dataclasses.replace(
            opts, steps=step + budgeted_steps(model, opts, device, bf16, world)
        )
        if rank == 0:
            log(f"{opts.minutes:g} minutes: {opts.steps - step} steps")
    ramp_share = opts.rate_weight_ramp
    if ramp_share is None:
        ramp_share = 0.02 if opts.init is not None else 0.3
    ramp_steps = ramp_share * opts.steps
    if rank == 0:
        log(
            f"assignment strength grows to {config.rate_weight:g} over the first "
            f"{round(ramp_steps)} of {opts.steps} steps"
        )
    lambdas = torch.tensor(config.point_lambdas(), device=device)
    balance = None
    if opts.balance_points and config.rate_points > 1:
        balance = PointBalance(config.rate_points, state=(state or {}).get("point_cost"))
        if rank == 0:
            log("each rate point's loss is weighted by the inverse of its running RD cost")
    point_rng = torch.Generator().manual_seed(opts.seed * 1000 + rank * 7919 + step)
    bar = tqdm(total=opts.steps, initial=step, disable=rank != 0, dynamic_ncols=True)
    t0, start_step = time.time(), step
    trained_pixels = 0
    while step < opts.steps:
        stage = stage_at(step, opts)
        x = sampler.batch(stage.crop, stage.batch).to(device).float() / 255.0
        set_learning_rate(optimizer, learning_rate(step, opts.lr, opts.warmup, opts.steps))
        ramp = min(1.0, step / max(1.0, ramp_steps))
        for level in (model.top, model.bottom):
            level.rate_weight = config.rate_weight * ramp
        trained_pixels += x.shape[0] * x.shape[2] * x.shape[3]
        points = sample_points(model, x.shape[0], point_rng).to(device)
        weights = balance.weights(points) if balance is not None else None
        out, r = train_step(wrapped, optimizer, x, points, lambdas, opts.commitment, bf16, weights)
        if balance is not None:
            balance.update(points, r["cost"])
        step += 1
        if step % 100 == 0:
            restart_dead_codes(model, out["latents"], world)
        bar.update(1)
        if step % 10 == 0:  # reading the loss waits for the device: not every step
            bar.set_postfix(
                loss=f"{r['loss'].item():.3f}",
                bpp=f"{r['bpp'].item():.3f}",
                psnr=f"{r['psnr'].item():.2f}",
                crop=stage.crop,
            )
        if rank == 0 and (step % opts.val_every == 0 or step == opts.steps) and val_images:
            v = validate(model, val_images)
            score = validation_score(v)
            summary = " | ".join(f"bpp {p['bpp']:.4f} psnr {p['psnr']:.2f}" for p in v)
            elapsed = time.time() - t0
            log(
                f"step {step}: val {summary} ({elapsed / 60:.1f} min for {step - start_step} "
                f"steps, {megapixels_per_s(trained_pixels, elapsed)})"
            )
            if best is None or score < best:
                best = score
                save_best(opts.out / "best.pt", model, step, v)
        stopping = (
            step < opts.steps
            and step % 10 == 0
            and time_is_up(started, opts.stop_after, world, device)
        )
        if rank == 0 and (step % opts.checkpoint_every == 0 or step == opts.steps or stopping):
            save_checkpoint(ckpt_path, model, optimizer, step, best, opts.steps, balance)
        if stopping:
            if rank == 0:
                log(
                    f"stopped after {opts.stop_after:g} minutes at step {step} of {opts.steps} "
                    f"({megapixels_per_s(trained_pixels, time.time() - t0)}): "
                    "continue with --resume"
                )
            break
    bar.close()
    best_path = opts.out / "best.pt"
    return best_path if best_path.exists() else ckpt_path  # stopped before any validation


def megapixels_per_s(pixels: int, seconds: float) -> str:
    return f"{pixels / 1e6 / max(seconds, 1e-9):.2f} megapixels/s"


def time_is_up(started: float, stop_after: float | None, world: int, device: torch.device) -> bool:
    """Whether `stop_after` minutes have passed since `started`; under DDP, rank 0's answer."""
    if stop_after is None:
        return False
    up = time.time() - started >= stop_after * 60
    if world > 1:  # only then a device round trip
        shared = torch.tensor([up], device=device)
        dist.broadcast(shared, 0)
        up = bool(shared)
    return up


def starting_model(opts: TrainOptions, state: dict | None, log) -> DQModel:
    """A resumed run's architecture (its weights are loaded later), a model file's weights
    (`init`), or a fresh model."""
    if state:
        return DQModel(ModelConfig.from_json(state["config"]))
    if opts.init is not None:
        model = initialised_model(opts)
        log(
            f"initialised from {opts.init} "
            f"(lambda {', '.join(map(str, model.config.point_lambdas()))}, "
            f"assignment strength {model.config.rate_weight})"
        )
        return model
    return DQModel(opts.config)


def restart_dead_codes(model: DQModel, latents: dict, world: int) -> None:
    for level in ("top", "bottom"):
        quantizer = getattr(model, level).quantizer
        quantizer.restart_dead_codes(latents[level])
        if world > 1:  # every replica must keep rank 0's codebooks
            dist.broadcast(quantizer.codebooks.data, 0)
            dist.broadcast(quantizer.usage, 0)


def train_step(
    model,
    optimizer,
    x: Tensor,
    points: Tensor,
    lambdas: Tensor,
    commitment: float,
    bf16: bool,
    weights: Tensor | None = None,
) -> tuple[dict, dict]:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(x, points)
    r = rd_loss(out, x, lambdas[points], commitment, weights)
    optimizer.zero_grad(set_to_none=True)
    r["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return out, r


def seconds_per_step(
    model: DQModel,
    stage: Stage,
    opts: TrainOptions,
    device: torch.device,
    bf16: bool,
    repeats: int = 5,
) -> float:
    """Time of one training step at a stage's crop and batch, on a throwaway copy of the model."""
    probe = copy.deepcopy(model).train()
    optimizer = make_optimizer(probe, opts.lr)
    x = torch.rand(stage.batch, 3, stage.crop, stage.crop, device=device)
    lambdas = torch.tensor(probe.config.point_lambdas(), device=device)
    generator = torch.Generator().manual_seed(0)

    def one_step():
        points = sample_points(probe, stage.batch, generator).to(device)
        _, r = train_step(probe, optimizer, x, points, lambdas, opts.commitment, bf16)
        r["loss"].item()  # waits for the device

    for _ in range(2):  # allocator and convolution-algorithm warm-up
        one_step()
    start = time.perf_counter()
    for _ in range(repeats):
        one_step()
    return (time.perf_counter() - start) / repeats


def steps_within(
    seconds: float, model: DQModel, opts: TrainOptions, device: torch.device, bf16: bool
) -> int:
    """How many steps of the stage schedule fit in `seconds` (5% kept for validation and
    checkpoints)."""
    total = sum(s.fraction for s in opts.stages)
    per_step = sum(
        s.fraction / total * seconds_per_step(model, s, opts, device, bf16) for s in opts.stages
    )
    return max(1, int(0.95 * seconds / per_step))


def budgeted_steps(
    model: DQModel, opts: TrainOptions, device: torch.device, bf16: bool, world: int
) -> int:
    """The steps that fit in `opts.minutes`; under DDP every replica takes rank 0's count."""
    steps = steps_within(opts.minutes * 60, model, opts, device, bf16)
    if world > 1:
        shared = torch.tensor([steps], device=device)
        dist.broadcast(shared, 0)
        steps = int(shared)
    return steps


def initialised_model(opts: TrainOptions) -> DQModel:
    """A model file's weights (or one rate point's, `init_point`), retargeted to the options'
    trade-off(s). A single-rate model made variable-rate starts every point from its weights,
    with the new model's gains and zero prior embeddings."""
    model = read_model_file(opts.init)
    if opts.init_point is not None:
        model = single_rate_model(model, opts.init_point)
    config = model.config
    if opts.init_lmbda is not None:
        config = dataclasses.replace(config, lmbda=opts.init_lmbda)
    if opts.init_rate_weight is not None:
        config = dataclasses.replace(config, rate_weight=opts.init_rate_weight)
    if opts.init_lambdas is not None and tuple(opts.init_lambdas) != config.lambdas:
        if config.rate_points > 1:
            raise DQError("--init: the model is already variable-rate; keep its lambdas")
        config = dataclasses.replace(config, lambdas=tuple(opts.init_lambdas))
        widened = DQModel(config)
        state = model.state_dict()
        for level in ("top", "bottom"):  # every point starts from the single rate's code bias
            key = f"{level}.prior.code_bias"
            state[key] = state[key].expand_as(widened.state_dict()[key]).clone()
        missing, unexpected = widened.load_state_dict(state, strict=False)
        assert not unexpected and all("gain" in k or "point_embedding" in k for k in missing)
        model = widened
    model.config = config
    model.top.rate_weight = model.bottom.rate_weight = config.rate_weight
    return model.train()


@torch.no_grad()
def single_rate_model(model: DQModel, point: int) -> DQModel:
    """One rate point of a variable-rate model as a single-rate model that codes exactly
    as that point did: the point's gains move into the convolutions on either side of the
    quantizer, its prior embedding into the biases that read it, its code bias stays."""
    config = model.config
    if config.rate_points == 1:
        raise DQError("--init-point needs a variable-rate --init model")
    if not 0 <= point < config.rate_points:
        raise DQError(f"--init-point must be 0..{config.rate_points - 1}")
    single = DQModel(dataclasses.replace(config, lambdas=(), lmbda=config.lambdas[point]))
    state = {
        k: v
        for k, v in model.state_dict().items()
        if "gain" not in k and "point_embedding" not in k
    }
    for level in ("top", "bottom"):
        state[f"{level}.prior.code_bias"] = state[f"{level}.prior.code_bias"][point]
    single.load_state_dict(state)
    # where DQModel applies the gains: after the latent's last encoder layer, before the
    # first layer that reads the decoded latent
    for level, encode, decode in (
        ("top", single.top_a[-1], single.top_s[0]),
        ("bottom", single.bottom_a, single.g_s[0]),
    ):
        gain = getattr(model, f"{level}_gain")[point].exp()
        encode.weight.mul_(gain[:, None, None, None])
        encode.bias.mul_(gain)
        decode.weight[: gain.numel()].div_(gain[:, None, None, None])
        embedding = getattr(model, level).prior.point_embedding[point]
        for projection in getattr(single, level).prior.cond_proj:
            projection.bias.add_(projection.weight[:, :, 0, 0] @ embedding)
    single.top.rate_weight, single.bottom.rate_weight = (
        model.top.rate_weight,
        model.bottom.rate_weight,
    )
    return single.train(model.training)


def deepened_prior(model: DQModel, kernel: int, blocks: int, free_logits: bool = False) -> DQModel:
    """The same model with a wider (kernel), deeper (blocks) or freer (free logits) prior
    that starts out computing exactly the old prior: old 1x1 weights sit at the centre of
    the wider kernels, and each new residual block's and free-logit head's last layer is zero."""
    old = model.config
    if (
        kernel < old.prior_kernel
        or kernel % 2 == 0
        or blocks < old.prior_blocks
        or old.prior_free_logits > free_logits
    ):
        raise DQError(
            f"the prior can only grow: it has kernel {old.prior_kernel}, "
            f"{old.prior_blocks} blocks and free logits {old.prior_free_logits}; "
            "the kernel must be odd"
        )
    deeper = DQModel(
        dataclasses.replace(
            old, prior_kernel=kernel, prior_blocks=blocks, prior_free_logits=free_logits
        )
    )
    state = deeper.state_dict()
    for key, value in state.items():
        if (".blocks." in key and key.rsplit(".", 2)[-2] == "3") or ".free." in key:
            value.zero_()
    for key, value in model.state_dict().items():
        if value.shape == state[key].shape:
            state[key] = value
        else:  # a convolution over the decoded slices, now wider
            pad = (kernel - old.prior_kernel) // 2
            state[key] = torch.nn.functional.pad(value, (pad, pad, pad, pad))
    deeper.load_state_dict(state)
    deeper.top.rate_weight, deeper.bottom.rate_weight = (
        model.top.rate_weight,
        model.bottom.rate_weight,
    )
    return deeper.train(model.training)


# The rate points' own prior parameters (embeddings, code biases) are few and are shared by
# no other point: they learn faster.
RATE_PARAM_LR_SCALE = 10.0


def make_optimizer(model: DQModel, lr: float) -> torch.optim.Optimizer:
    def per_point(name: str, parameter: Tensor) -> bool:
        return "point_embedding" in name or (name.endswith("code_bias") and parameter.dim() == 3)

    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if not per_point(n, p)], "lr_scale": 1.0}]
    rate = [p for n, p in named if per_point(n, p)]
    if rate:
        groups.append({"params": rate, "lr_scale": RATE_PARAM_LR_SCALE})
    return torch.optim.Adam(groups, lr=lr)


def model_from_checkpoint(path: Path) -> DQModel:
    state = load_checkpoint(path)
    model = DQModel(ModelConfig.from_json(state["config"]))
    model.load_state_dict(state["model"])
    return model.eval()
