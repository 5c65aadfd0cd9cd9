"""Refit the prior of a trained model to its own codes, the transforms frozen.

The prior works at the latent's resolution (1/16 of the image side), so once every
training photo's codes are cached, a step costs a small fraction of a training step: a
wider, deeper or freer prior (see `deepened_prior`) fits on a CPU in minutes. The codes
are assigned once, by the starting model. A new prior moves few of the encoder's rate-aware
choices at `dq-vr`'s assignment strength (0.01); at the single-rate models' 0.3-0.5 it moves
more, so check a refitted model on real files.

Fitting runs in fp32, as the prior always trains: in bf16 a peaked prior's logits moved by
more than the fitting gained (a low-rate model's held-out bits rose by 26% in 250 steps).

A window is not a photo: near an edge where a window cuts through a photo, the prior sees
zeros where the coder sees the neighbouring codes. For a low-rate model, a 16 x 16 window at a
photo's corner cost 2.9 times the bits of the same positions in the whole photo, nearly all of
the excess at its two cut edges. Only positions whose view of the codes is the whole photo's
count in the loss (see `context_radius`).

Only the bottom level's prior is fitted. The top level carries 1-2% of the bits, and its
latent is 4x coarser, so a training window of it is mostly border: fitting it on windows
made its bits on whole photos four times larger in a first run.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from dqcodec.errors import DQError
from dqcodec.evaluation.datasets import list_images
from dqcodec.models.config import ModelConfig
from dqcodec.models.dq import DQModel, pad_to_stride
from dqcodec.training.trainer import (
    deepened_prior,
    learning_rate,
    load_checkpoint,
    load_rgb,
    make_optimizer,
    save_best,
    save_checkpoint,
    set_learning_rate,
    split_train_val,
)
from dqcodec.zoo import model_id, read_model_file


@dataclass
class PriorFitOptions:
    data: Path
    out: Path
    init: Path  # the model whose prior is refitted
    kernel: int = 3
    blocks: int = 1
    free_logits: bool = False
    steps: int = 2000
    lr: float = 3e-4
    warmup: int = 50
    window: int = 24  # bottom-latent positions per side of a training window (384 px)
    batch: int = 16
    val_count: int = 16
    val_every: int = 250
    seed: int = 0
    # the codes of every photo, kept between runs: assigning them is most of a short run
    # (12 of 32 minutes for dq-vr)
    codes_file: Path | None = None


@dataclass
class PhotoCodes:
    """One photo's codes at every rate point of the frozen model."""

    cond: Tensor  # (P, N, h, w) fp16: the bottom level's conditioning features
    bottom: Tensor  # (P, G, h, w) uint8
    top: Tensor  # (P, G_top, h / 4, w / 4) uint8


def photo_codes(model: DQModel, path: Path) -> PhotoCodes:
    x = pad_to_stride(load_rgb(path)[None].float() / 255.0, model.config.top_stride)
    features = model.analyse(x.contiguous(memory_format=torch.channels_last))
    # one point at a time, as the encoder assigns them (a batch of all points was about 2x
    # slower on photos of 2 megapixels)
    codes = [model.assign_codes(features, p) for p in range(model.config.rate_points)]
    return PhotoCodes(
        torch.cat([c["cond"] for c in codes]).half(),
        torch.cat([c["bottom"] for c in codes]).to(torch.uint8),
        torch.cat([c["top"] for c in codes]).to(torch.uint8),
    )


def information(
    model: DQModel, cond: Tensor, bottom: Tensor, top: Tensor, points: Tensor
) -> Tensor:
    """Bits of both levels' indices under the model's priors (teacher forced)."""
    ones = torch.ones(top.shape[0], 1, *top.shape[-2:], device=cond.device)
    return model.bottom.information(bottom.long(), cond.float(), points) + model.top.information(
        top.long(), ones, points
    )


@torch.no_grad()
def validation_bpp(model: DQModel, photos: list[PhotoCodes]) -> list[float]:
    """Bits per (padded) pixel of each rate point over whole held-out photos."""
    model.eval()
    pixels = (
        sum(c.bottom.shape[-1] * c.bottom.shape[-2] for c in photos) * model.config.bottom_stride**2
    )
    per_point = []
    for p in range(model.config.rate_points):
        point = torch.tensor([p])
        bits = sum(
            float(
                information(model, c.cond[p : p + 1], c.bottom[p : p + 1], c.top[p : p + 1], point)
            )
            for c in photos
        )
        per_point.append(bits / pixels)
    return per_point


def context_radius(config: ModelConfig) -> int:
    """How far from a position the bottom prior looks: the 5x5 convolution over the current
    slice (or the wider one over earlier slices), then 1 per 3x3 convolution of the blocks.
    The 3x3 conditioning trunk runs beside them and is covered."""
    return max(2, config.prior_kernel // 2) + 2 * config.prior_blocks


def window_weights(h: int, w: int, y: int, x: int, s: int, margin: int) -> Tensor:
    """(s, s): 1 where a window at (y, x) of an (h, w) photo sees what the whole photo shows,
    0 within `margin` of an edge that cuts through the photo."""
    weights = torch.ones(s, s)
    if y > 0:
        weights[:margin] = 0
    if y + s < h:
        weights[s - margin :] = 0
    if x > 0:
        weights[:, :margin] = 0
    if x + s < w:
        weights[:, s - margin :] = 0
    return weights


def random_windows(
    photos: list[PhotoCodes], opts: PriorFitOptions, points: int, margin: int, rng: random.Random
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bottom-level windows at random rate points: conditioning, indices, points and the
    positions' weights in the loss. Offsets are multiples of 4, where the top level's
    positions start."""
    s = opts.window
    cond, bottom, chosen, weights = [], [], [], []
    while len(chosen) < opts.batch:
        c = photos[rng.randrange(len(photos))]
        h, w = c.bottom.shape[-2:]
        p, y, x = (
            rng.randrange(points),
            rng.randrange(0, h - s + 1, 4),
            rng.randrange(0, w - s + 1, 4),
        )
        cond.append(c.cond[p, :, y : y + s, x : x + s])
        bottom.append(c.bottom[p, :, y : y + s, x : x + s])
        chosen.append(p)
        weights.append(window_weights(h, w, y, x, s, margin))
    return (
        torch.stack(cond).float(),
        torch.stack(bottom).long(),
        torch.tensor(chosen),
        torch.stack(weights),
    )


def prior_model(start: DQModel, opts: PriorFitOptions) -> DQModel:
    """The starting model with the options' prior; only the bottom prior's parameters train."""
    if opts.window < 4 or opts.window % 4:
        raise DQError("the window must be a positive multiple of 4 latent positions")
    model = deepened_prior(start, opts.kernel, opts.blocks, opts.free_logits)
    margin = context_radius(model.config)
    if opts.window <= 2 * margin:
        raise DQError(
            f"the window ({opts.window}) must be wider than twice the prior's view ({margin})"
        )
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("bottom.prior."))
    return model


def cache_codes(model: DQModel, paths: list[Path], desc: str) -> list[PhotoCodes]:
    model.eval()
    return [photo_codes(model, p) for p in tqdm(paths, desc=desc, leave=False)]


def _codes_key(model: DQModel, train: list[Path], val: list[Path]) -> dict[str, str]:
    """What the codes depend on: the weights that assigned them and the photos (by name and
    size, in order)."""

    def listing(paths):
        return json.dumps([[p.name, p.stat().st_size] for p in paths])

    return {"model_id": model_id(model).hex(), "train": listing(train), "val": listing(val)}


_CODE_FIELDS = ("cond", "bottom", "top")  # PhotoCodes' tensors, in order


def save_codes(
    path: Path, key: dict[str, str], train: list[PhotoCodes], val: list[PhotoCodes]
) -> None:
    """Written beside `path` and renamed into place, so an interrupted write leaves no
    half-written codes file."""
    tensors = {
        f"{split}.{i}.{field}": getattr(c, field)
        for split, codes in (("train", train), ("val", val))
        for i, c in enumerate(codes)
        for field in _CODE_FIELDS
    }
    partial = path.with_name(path.name + ".part")
    try:
        save_file(tensors, str(partial), metadata=key)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def load_codes(path: Path, key: dict[str, str]) -> tuple[list[PhotoCodes], list[PhotoCodes]] | None:
    """The saved codes when they were made by the same weights from the same photos."""
    try:
        with safe_open(str(path), framework="pt") as f:
            if f.metadata() != key:
                return None
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (OSError, SafetensorError):
        return None

    def split(name: str) -> list[PhotoCodes]:
        count = len(json.loads(key[name]))
        return [
            PhotoCodes(*(tensors[f"{name}.{i}.{field}"] for field in _CODE_FIELDS))
            for i in range(count)
        ]

    return split("train"), split("val")


def all_codes(
    model: DQModel, train: list[Path], val: list[Path], codes_file: Path | None, log=print
) -> tuple[list[PhotoCodes], list[PhotoCodes]]:
    """Every photo's codes under `model`, read from `codes_file` when it holds them, else
    assigned (and saved there)."""

    def assigned():
        return cache_codes(model, train, "caching codes"), cache_codes(
            model, val, "caching held-out codes"
        )

    if codes_file is None:
        return assigned()
    key = _codes_key(model, train, val)
    if codes_file.exists():
        saved = load_codes(codes_file, key)
        if saved is not None:
            log(f"codes read from {codes_file}")
            return saved
        log(f"{codes_file} does not hold this model's codes of these photos: assigning them again")
    codes = assigned()
    save_codes(codes_file, key, *codes)
    return codes


def fit_prior(opts: PriorFitOptions, resume: bool = False, log=print) -> Path | None:
    """Fits and writes OUT/best.pt, a training checkpoint that `dqcodec export` turns into a
    model file, whenever a validation beats the best so far, the starting prior included.
    Returns its path, or None when no validation beat the starting prior."""
    opts.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = opts.out / "checkpoint.pt"
    start_model = read_model_file(opts.init)
    model = prior_model(start_model, opts)
    optimizer = make_optimizer(model, opts.lr)
    step, best = 0, None
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, best = state["step"], state["best_val"]
        log(f"resumed from {ckpt_path} at step {step}")
    train_paths, val_paths = split_train_val(list_images(opts.data), opts.val_count)
    if not val_paths:
        raise DQError("prior fitting needs at least 5 images (a fifth is held out)")
    # assigned by the starting model (which the grown prior computes exactly), also when
    # resuming, so a resumed fit sees the codes an uninterrupted one would
    train_codes, val_codes = all_codes(start_model, train_paths, val_paths, opts.codes_file, log)
    train_codes = [c for c in train_codes if min(c.bottom.shape[-2:]) >= opts.window]
    if not train_codes:
        side = opts.window * model.config.bottom_stride
        raise DQError(f"no training image is at least {side} px on each side (after padding)")
    start = validation_bpp(model, val_codes)
    log("held-out bpp at the start: " + " ".join(f"{b:.4f}" for b in start))
    if best is None:
        best = sum(math.log(b) for b in start)
    rng = random.Random(opts.seed * 1000 + step)
    points = model.config.rate_points
    margin = context_radius(model.config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=opts.steps, initial=step, dynamic_ncols=True)
    t0, first = time.time(), step
    while step < opts.steps:
        model.train()
        cond, bottom, chosen, weights = random_windows(train_codes, opts, points, margin, rng)
        pixels = weights.sum() * model.config.bottom_stride**2
        bpp = model.bottom.information(bottom, cond, chosen, weights) / pixels
        set_learning_rate(optimizer, learning_rate(step, opts.lr, opts.warmup, opts.steps))
        optimizer.zero_grad(set_to_none=True)
        bpp.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        step += 1
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(bpp=f"{bpp.item():.4f}")
        if step % opts.val_every == 0 or step == opts.steps:
            val = validation_bpp(model, val_codes)
            change = " ".join(f"{100 * (b / a - 1):+.2f}%" for a, b in zip(start, val))
            log(
                f"step {step}: held-out bpp {' '.join(f'{b:.4f}' for b in val)} ({change}; "
                f"{(time.time() - t0) / 60:.1f} min for {step - first} steps)"
            )
            score = sum(math.log(b) for b in val)
            if score < best:
                best = score
                save_best(opts.out / "best.pt", model, step, [{"bpp": b} for b in val])
            save_checkpoint(ckpt_path, model, optimizer, step, best, opts.steps)
    bar.close()
    best_path = opts.out / "best.pt"
    if not best_path.exists():
        log("no validation beat the starting prior: no best.pt written")
        return None
    return best_path
