"""Activation ranges of the float prior: what the integer prior's formats are derived from.

The ranges come from running the float prior, hooked, on either
* data the codec synthesizes itself: code indices sampled from its own prior, top level
  first, pass by pass, then decoded through the codebooks (the zero-shot idea of LRQ,
  arXiv 2211.06816: no photo needed, so any model file can be calibrated), or
* photos: the codes the encoder assigns to crops of real images.

A calibration is plain JSON, stored with the model (`zoo.py`), because the integer prior
must be derived from the same numbers on every machine.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from dqcodec.models.dq import DQModel

CALIBRATION_VERSION = 1
# "max" clips nothing; "quantile" clips the int8 inputs of convolutions (GELU outputs) at
# their 99.99th percentile, which measured worse (a level-3 model lost 12 % on synthesized codes)
STATISTICS = ("max", "quantile")
QUANTILE = 0.9999
_SAMPLE = 1 << 16  # values kept per site and call for the quantile


class RangeRecorder:
    """Forward hooks that keep, per site, max |x| (wide sites) or max x (int8 inputs, whose
    values are also sampled when the statistic is the quantile)."""

    def __init__(self, statistic: str):
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}")
        self.statistic = statistic
        self.max_abs: dict[str, float] = {}
        self.samples: dict[str, list[Tensor]] = {}
        self.handles = []
        self.generator = torch.Generator().manual_seed(0)

    def wide(self, module, name: str, on_input: bool = False) -> None:
        def record(t: Tensor) -> None:
            self.max_abs[name] = max(self.max_abs.get(name, 0.0), float(t.detach().abs().max()))

        if on_input:
            self.handles.append(module.register_forward_pre_hook(lambda m, inp: record(inp[0])))
        else:
            self.handles.append(module.register_forward_hook(lambda m, inp, out: record(out)))

    def activation(self, module, name: str) -> None:
        def record(m, inp, out: Tensor) -> None:
            if self.statistic == "quantile":
                flat = out.detach().float().reshape(-1)
                if flat.numel() > _SAMPLE:
                    flat = flat[
                        torch.randint(0, flat.numel(), (_SAMPLE,), generator=self.generator)
                    ]
                self.samples.setdefault(name, []).append(flat)
            self.max_abs[name] = max(self.max_abs.get(name, 0.0), float(out.detach().max()))

        self.handles.append(module.register_forward_hook(record))

    def ranges(self) -> dict[str, float]:
        out = dict(self.max_abs)
        if self.statistic == "quantile":
            for name, parts in self.samples.items():
                values = torch.cat(parts)
                out[name] = (
                    float(torch.quantile(values, QUANTILE)) if values.numel() > 1 else out[name]
                )
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _hook_prior(recorder: RangeRecorder, prior, prefix: str, conditioned: bool) -> None:
    recorder.wide(prior.cond_trunk[0], f"{prefix}.trunk")
    if conditioned:
        recorder.wide(prior.cond_trunk[0], f"{prefix}.cond", on_input=True)
    recorder.activation(prior.cond_trunk[1], f"{prefix}.features")
    for s, context in enumerate(prior.contexts):
        for b, block in enumerate(context.blocks):
            recorder.wide(block, f"{prefix}.h{s}", on_input=True)
            recorder.wide(block, f"{prefix}.h{s}")
            recorder.activation(block[0], f"{prefix}.s{s}.b{b}.act1")
            recorder.wide(block[1], f"{prefix}.s{s}.b{b}.mid")
            recorder.activation(block[2], f"{prefix}.s{s}.b{b}.act2")
        recorder.wide(context.head, f"{prefix}.h{s}", on_input=True)
        recorder.activation(context.head[0], f"{prefix}.s{s}.head.act1")
        recorder.wide(context.head[1], f"{prefix}.s{s}.head.mid")
        recorder.activation(context.head[2], f"{prefix}.s{s}.head.act2")
        if context.free is not None:
            recorder.activation(context.free[0], f"{prefix}.s{s}.free.act")


def _ranges_per_point(model: DQModel, statistic: str, run) -> dict:
    """{point: {level: {site: range}}} over what run(point) makes the float prior compute."""
    points = {}
    for point in range(model.config.rate_points):
        recorder = RangeRecorder(statistic)
        _hook_prior(recorder, model.top.prior, "top", conditioned=False)
        _hook_prior(recorder, model.bottom.prior, "bottom", conditioned=True)
        recorder.wide(model.top_s[0], "condition.mid")
        recorder.activation(model.top_s[1], "condition.act")
        try:
            run(point)
        finally:
            recorder.remove()
        points[str(point)] = _nested(recorder.ranges())
    return points


def _nested(flat: dict[str, float]) -> dict:
    out: dict = {}
    for name, value in flat.items():
        level, site = name.split(".", 1)
        out.setdefault(level, {})[site] = value
    return out


def sample_codes(model: DQModel, point: int, shape: tuple[int, int], batch: int, generator) -> None:
    """Draw code indices from the model's own prior, top level then bottom, pass by pass."""

    def sample(p, groups, logits, rows, mask, table):
        flat = torch.softmax(logits.reshape(-1, logits.shape[-1]), -1)
        return torch.multinomial(flat, 1, generator=generator).reshape(logits.shape[:-1])

    points = torch.full((batch,), point, dtype=torch.long)
    top, _, _ = model.top._run_passes(torch.ones(batch, 1, *shape), points, sample)
    cond = model.condition_from_top(top, points)
    model.bottom._run_passes(cond, points, sample)


@torch.no_grad()
def calibrate_synthesized(
    model: DQModel,
    samples: int = 8,
    shape: tuple[int, int] = (8, 12),
    statistic: str = "max",
    seed: int = 0,
) -> dict:
    """Ranges at every rate point from `samples` top-level latents of `shape` (8 x 12: a
    768 x 512 image) drawn from the model's own prior."""
    generator = torch.Generator().manual_seed(seed)
    points = _ranges_per_point(
        model, statistic, lambda p: sample_codes(model, p, shape, samples, generator)
    )
    return {
        "version": CALIBRATION_VERSION,
        "source": f"synthesized: {samples} samples of {shape[0]}x{shape[1]} "
        "top-level codes drawn from the prior",
        "statistic": statistic,
        "points": points,
    }


def training_photos(folder: Path, count: int) -> list[Path]:
    """`count` photos of the folder's training split (the photos train and fit-prior train
    on, never their held-out ones), chosen with a fixed seed."""
    import random

    from dqcodec.evaluation.datasets import list_images
    from dqcodec.training.trainer import split_train_val

    train, _ = split_train_val(list_images(folder), 16)
    random.Random(0).shuffle(train)
    return train[:count]


@torch.no_grad()
def calibrate_photos(
    model: DQModel, photos: list[Path], crop: int = 512, statistic: str = "max"
) -> dict:
    """Ranges at every rate point from the codes assigned to centre crops of photos."""
    from dqcodec.image_io import open_image, to_tensor
    from dqcodec.models.dq import pad_to_stride

    images = []
    for path in photos:
        image = open_image(path).convert("RGB")
        left, top = max(0, (image.width - crop) // 2), max(0, (image.height - crop) // 2)
        images.append(
            pad_to_stride(
                to_tensor(image.crop((left, top, left + crop, top + crop))), model.config.top_stride
            )
        )
    features = [model.analyse_image(x) for x in images]  # the same at every rate point
    points = _ranges_per_point(
        model, statistic, lambda p: [model.assign_codes(f, p) for f in features]
    )
    return {
        "version": CALIBRATION_VERSION,
        "source": f"photos: centre {crop}x{crop} crops of "
        + ", ".join(sorted(p.name for p in photos)),
        "statistic": statistic,
        "points": points,
    }
