"""Storing a synthesis activation in fewer bits: the GF(2) seed method (Gudovskiy, Hodgkinson
& Rigazio 2018, arXiv 1808.05285) against plain fixed point.

Run by hand (not part of the tests); it trains the small layers, then prints figures and a
markdown table:

    python benchmarks/heldout_photos.py HELDOUT      # the 16 photos training holds out
    OMP_NUM_THREADS=1 python benchmarks/gf2_feature_maps.py --heldout-dir HELDOUT \\
        --workdir WORKDIR | tee gf2-output.txt
    # quicker: --steps 25 --crops 128 --insert 3 --gf2 8:0.5

The method, at one insertion point of `g_s` (after layer `--insert`, default 3: the second
inverse GDN, 128 channels at a quarter of the output resolution): the activation is quantized
to B-bit fixed point (per-channel min/max of the training features, clamped), each channel
expanded to its B bits (a vector over GF(2) of B*C bits per position), a learned 1x1
convolution to C~ channels and a binarization gives the stored C~ bits per position, a
learned 1x1 convolution back to B*C channels and a binarization gives the bits again, which
are read back as fixed point for the next layer. Stored bytes per element: C~ / (8 C).
Only the two 1x1 layers train (Adam, straight-through estimator: forward a hard step,
backward the sigmoid's gradient; their inputs are the bits as +-1), the decoder stays
frozen. They start as plain fixed point at C~/C bits: the compression keeps the top C~/C
bits of each channel, the expansion puts them back and sets the dropped bits to the middle
of their interval; --jitter adds Gaussian noise to both weights, small enough that no bit
flips at the start. Every 25 steps the MSE of the first 32 training crops is measured and
the layers keep the parameters with the lowest (the start included): the straight-through
steps of this start flip whole bit planes at once, so the MSE stays put and then jumps up.

Training data: random --crop crops (with flips) of the training photos (--train-dir, without
the photos training holds out; never Kodak), coded at each quality level's rate point
without the encoder search (the analysis transform's features, the level's code assignment,
no range coding), and decoded by the frozen `g_s` up to the insertion point. The loss is the
MSE of the decoded crop against the frozen decoder's output for the same codes (not against
the original photo). One set of layers per weights file: level 1 has its own model, levels 5
and 9 share the variable-rate model (rate points 2 and 6), so its layers see both points.

Evaluation: each image is coded as `dqcodec encode -q L` codes it (default effort), its .dq
payload entropy-decoded (`decode_latents`), and the synthesis run whole (untiled) with and
without the inserted layer; PSNR on 8-bit RGB against the original per image, the change
against the unmodified decoder averaged over images. Kodak (evaluation only): all 24 images
at --kodak-full-level, every third (kodim01, 04, ..., 22) at the other levels; --heldout-dir:
all its photos at every level. The time ratio is the tiled synthesis (as `Codec.decode` runs
it, in-place GDNs) of kodim23 at level 5 with the layer over without, best of --rounds, the
variants taking turns.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from dqcodec import zoo
from dqcodec.codec import load_codec
from dqcodec.container import DQFile
from dqcodec.evaluation.datasets import list_images
from dqcodec.evaluation.metrics import psnr
from dqcodec.image_io import open_image, to_image
from dqcodec.layers import GDN
from dqcodec.models.tiling import tiled_synthesis
from dqcodec.training.trainer import split_train_val

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO.parent / "shared" / "data" / "train"
KODAK = REPO.parent / "shared" / "data" / "kodak"
LEVELS = (1, 5, 9)


def binarize(pre):
    """(pre > 0) in the forward pass; the sigmoid's gradient in the backward pass."""
    hard = (pre > 0).to(pre.dtype)
    if not torch.is_grad_enabled():
        return hard
    soft = torch.sigmoid(pre)
    return hard + (soft - soft.detach())


class FixedPoint(nn.Module):
    """Plain fixed point: `bits`-bit uniform levels between the calibrated per-channel
    min and max (values outside are clamped)."""

    def __init__(self, lo, hi, bits: int):
        super().__init__()
        self.bits = bits
        self.register_buffer("lo", lo.clone())
        self.register_buffer("step", (hi - lo).clamp_min(1e-12) / (2**bits - 1))

    def forward(self, x):
        q = ((x - self.lo) / self.step).round_().clamp_(0, 2**self.bits - 1)
        return q.mul_(self.step).add_(self.lo)


class GF2(nn.Module):
    """B-bit fixed point -> B*C bits -> 1x1 conv + binarization to `reduced` stored bits
    -> 1x1 conv + binarization to B*C bits -> fixed point."""

    def __init__(self, lo, hi, bits: int, reduced: int, scale=4.0, jitter=0.0):
        super().__init__()
        channels = lo.shape[1]
        if reduced % channels or reduced // channels > bits:
            raise ValueError(f"{reduced} stored bits is not k * {channels}, k <= {bits}")
        self.bits, self.channels, self.reduced = bits, channels, reduced
        self.register_buffer("lo", lo.clone())
        self.register_buffer("step", (hi - lo).clamp_min(1e-12) / (2**bits - 1))
        self.register_buffer("shifts", torch.arange(bits - 1, -1, -1).view(1, 1, bits, 1, 1))
        self.register_buffer("weights", (2.0**self.shifts).float())
        self.compress = nn.Conv2d(bits * channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, bits * channels, 1)
        keep = reduced // channels
        with torch.no_grad():  # plain fixed point at `keep` bits, dropped bits mid-interval
            self.compress.weight.zero_()
            self.compress.bias.zero_()
            self.expand.weight.zero_()
            self.expand.bias.fill_(-scale / 2)
            for c in range(channels):
                for j in range(keep):
                    self.compress.weight[c * keep + j, c * bits + j] = scale / 2
                    self.expand.weight[c * bits + j, c * keep + j] = scale / 2
                    self.expand.bias[c * bits + j] = 0
                if keep < bits:
                    self.expand.bias[c * bits + keep] = scale / 2
            # spread the pre-activations, which the above puts all at +-scale/2, so that
            # a step flips some positions' bits rather than none or all
            self.compress.weight.add_(torch.randn_like(self.compress.weight) * jitter)
            self.expand.weight.add_(torch.randn_like(self.expand.weight) * jitter)

    def to_bits(self, x):
        n, c, h, w = x.shape
        q = ((x - self.lo) / self.step).round().clamp_(0, 2**self.bits - 1).to(torch.int32)
        bits = (q.unsqueeze(2) >> self.shifts) & 1  # (N, C, B, H, W), MSB first
        return bits.to(x.dtype).reshape(n, c * self.bits, h, w)

    def stored(self, x):
        """The C~ bits per position that would be kept in memory (0/1 floats)."""
        return binarize(self.compress(self.to_bits(x).mul_(2).sub_(1)))

    def forward(self, x):
        n, _, h, w = x.shape
        out = binarize(self.expand(self.stored(x) * 2 - 1))
        code = (out.view(n, self.channels, self.bits, h, w) * self.weights).sum(2)
        return code.mul_(self.step).add_(self.lo)


def run_layers(model, x, start: int, stop: int, inplace: bool):
    """g_s layers start..stop-1 on x (in-place GDNs when `inplace`: x must be disposable)."""
    for layer in list(model.g_s)[start:stop]:
        x = layer.forward_(x) if inplace and isinstance(layer, GDN) else layer(x)
    return x


def synthesise(model, y, index: int | None, insert):
    """model.synthesise_inplace(y) with `insert` applied after layer `index` (None: none)."""
    if index is None:
        return synthesis_tail(model, y, y, None)
    x = run_layers(model, y, 0, index + 1, True)
    return synthesis_tail(model, x if insert is None else insert(x), y, index)


def synthesis_tail(model, x, y, index: int | None):
    """The g_s layers after `index` (all of them for None) on x, plus y's linear skip."""
    x = run_layers(model, x, 0 if index is None else index + 1, len(model.g_s), True)
    return x.add_(model.skip_s(y)) if model.config.linear_skip else x


def assigned_latent(model, x, point: int, rate_weight):
    """The synthesis input for images x without the encoder search or range coding: the
    analysis features, the level's code assignment, the decoded codes."""
    points = model._points(x.shape[0], point, x.device)
    h = model.analyse(x)
    levels = model._through_levels(
        h,
        points,
        lambda level, latent, cond, above: level.assign(latent, cond, points, rate_weight),
    )
    y = model._unscaled(levels["bottom"]["y_hat"], model._gain("bottom", points))
    return torch.cat([y, levels["cond"]], 1)


def collect(codecs, photos, crops: int, size: int, batch: int, inserts, seed: int) -> dict:
    """Training features at each insertion point, and the frozen decoder's output, of `crops`
    random crops shared out among the codecs' rate points (one weights file)."""
    rng = random.Random(seed)
    model = codecs[0].model
    feats = {i: [] for i in inserts}
    targets, skips = [], []
    count = 0
    with torch.no_grad():
        while count < crops:
            codec = codecs[(count // batch) % len(codecs)]
            images = []
            for _ in range(min(batch, crops - count)):
                with Image.open(rng.choice(photos)) as im:
                    im = im.convert("RGB")
                    left = rng.randrange(im.width - size + 1)
                    top = rng.randrange(im.height - size + 1)
                    a = np.asarray(im.crop((left, top, left + size, top + size))).copy()
                if rng.random() < 0.5:
                    a = a[:, ::-1]
                images.append(torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255)
            x = torch.stack(images).contiguous(memory_format=torch.channels_last)
            y = assigned_latent(model, x, codec.rate_point, codec.rate_weight)
            h = y
            for i, layer in enumerate(model.g_s):
                h = layer(h)
                if i in feats:
                    feats[i].append(h.clone())
            if model.config.linear_skip:
                skip = model.skip_s(y)
                skips.append(skip)
                h = h + skip
            targets.append(h)
            count += x.shape[0]
    out = {i: torch.cat(f) for i, f in feats.items()}
    out["target"] = torch.cat(targets)
    out["skip"] = torch.cat(skips) if skips else None
    return out


def train(model, layer, feats, target, skip, index, steps, batch, lr, seed, check=25):
    """Adam on the inserted layer's parameters; MSE of the decoded crops against `target`.
    Every `check` steps the MSE of the first 32 pool crops is measured and the layer keeps
    the parameters with the lowest (the start included). Returns (seconds, that MSE at the
    start, the lowest, its step)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    tail = list(model.g_s)[index + 1 :]

    def decoded(f, idx):
        x = layer(f)
        for t in tail:
            x = t(x)
        return x + skip[idx] if skip is not None else x

    monitor = torch.arange(min(32, feats.shape[0]))

    def monitor_mse() -> float:
        with torch.no_grad():
            out = torch.cat(
                [decoded(feats[i : i + 8], monitor[i : i + 8]) for i in range(0, 32, 8)]
            )
            return (out - target[monitor]).pow(2).mean().item()

    before = best = monitor_mse()
    best_step, best_state = 0, {k: v.clone() for k, v in layer.state_dict().items()}
    t0 = time.perf_counter()
    running, since = 0.0, 0
    for step in range(1, steps + 1):
        idx = torch.randint(feats.shape[0], (batch,), generator=g)
        loss = (decoded(feats[idx], idx) - target[idx]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running, since = running + loss.item(), since + 1
        if step % check == 0 or step == steps:
            now = monitor_mse()
            print(
                f"      step {step:4d}  training MSE {running / since:.3e}  pool crops {now:.3e}",
                flush=True,
            )
            running, since = 0.0, 0
            if now < best:
                best, best_step = now, step
                best_state = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.load_state_dict(best_state)
    seconds = time.perf_counter() - t0
    return seconds, before, best, best_step


def decoded_psnr(x_hat, original) -> float:
    """PSNR of the synthesis output as dqcodec writes it (8-bit pixels) against `original`."""
    return psnr(to_image(x_hat[..., : original.height, : original.width]), original)


def decoded_latent(codec, level: int, path: Path, cache: Path):
    """The synthesis input decoding sees for `path` coded at `level` (cached in `cache`)."""
    file = cache / f"{path.parent.name}-{path.stem}-q{level}.pt"
    if file.exists():
        return torch.load(file)
    dq = DQFile.from_bytes(codec.encode(open_image(path)))
    shape = (-(-dq.height // codec.stride), -(-dq.width // codec.stride))
    y = codec.model.decode_latents(
        [dq.top, dq.bottom], shape, dq.rate_point, codec.integer_model(dq.rate_point)
    )["y"]
    torch.save(y, file)
    return y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-dir", type=Path, default=TRAIN)
    ap.add_argument("--kodak-dir", type=Path, default=KODAK)
    ap.add_argument("--heldout-dir", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "dq-gf2")
    ap.add_argument("--insert", default="3", help="g_s layer indices to insert after, e.g. 3,1")
    ap.add_argument("--plain", default="8,6,4,3", help="plain fixed-point bit widths")
    ap.add_argument(
        "--gf2",
        default="8:0.75,8:0.5,8:0.375,6:0.75,6:0.5,6:0.375",
        help="B:bytes per element of the GF(2) layers",
    )
    ap.add_argument("--crops", type=int, default=384, help="training crops per weights file")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--jitter", type=float, default=0.01, help="std of the weights' init noise")
    ap.add_argument("--kodak-full-level", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    inserts = [int(i) for i in args.insert.split(",")]
    plain_bits = [int(b) for b in args.plain.split(",")]
    gf2_specs = [(int(b), float(r)) for b, r in (s.split(":") for s in args.gf2.split(","))]
    cache = args.workdir / "latents"
    cache.mkdir(parents=True, exist_ok=True)
    photos, held_out = split_train_val(list_images(args.train_dir), 16)
    print(
        f"{args.threads} thread(s); training photos {len(photos)} of {args.train_dir} "
        f"(without the {len(held_out)} held out); {args.crops} crops of {args.crop}x"
        f"{args.crop} per weights file; {args.steps} Adam steps of {args.batch}, lr {args.lr}, "
        f"init jitter {args.jitter}"
    )

    # one set of layers per weights file and insertion point
    groups: dict[Path, list[int]] = {}
    for level in LEVELS:
        groups.setdefault(zoo.shipped_models()[level].weights, []).append(level)
    layers: dict[tuple, dict] = {}  # (weights, index) -> {storage name: module}
    for weights, levels in groups.items():
        codecs = [load_codec(q) for q in levels]
        model = codecs[0].model
        points = ", ".join(f"q{c.quality} point {c.rate_point}" for c in codecs)
        print(f"\n{weights.name}: {points}; collecting crops", flush=True)
        t0 = time.perf_counter()
        pool = collect(codecs, photos, args.crops, args.crop, args.batch, inserts, args.seed)
        print(f"  {args.crops} crops in {time.perf_counter() - t0:.0f} s")
        for index in inserts:
            feats = pool[index].contiguous(memory_format=torch.channels_last)
            lo = feats.amin((0, 2, 3), keepdim=True)
            hi = feats.amax((0, 2, 3), keepdim=True)
            chosen = {f"fixed {b}-bit": (FixedPoint(lo, hi, b), b / 8) for b in plain_bits}
            channels = feats.shape[1]
            for bits, per_element in gf2_specs:
                reduced = round(8 * channels * per_element)
                name = f"GF(2) {bits}-bit, {reduced} bits stored"
                layer = GF2(lo, hi, bits, reduced, jitter=args.jitter)
                print(f"  after layer {index}: {name}", flush=True)
                seconds, before, after, best_step = train(
                    model,
                    layer,
                    feats,
                    pool["target"],
                    pool["skip"],
                    index,
                    args.steps,
                    args.batch,
                    args.lr,
                    args.seed,
                )
                print(
                    f"    {args.steps} steps in {seconds:.0f} s; MSE against the frozen "
                    f"output (32 training crops): start {before:.3e} "
                    f"({-10 * math.log10(before):.2f} dB), kept step {best_step}: {after:.3e} "
                    f"({-10 * math.log10(after):.2f} dB)",
                    flush=True,
                )
                chosen[name] = (layer.eval().requires_grad_(False), per_element)
            layers[(weights, index)] = chosen
        del pool

    # evaluation
    kodak = list_images(args.kodak_dir)
    sets = {"Kodak": kodak}
    if args.heldout_dir is not None:
        sets["held-out"] = list_images(args.heldout_dir)
    deltas: dict[tuple, list[float]] = {}  # (set, level, index, name) -> per-image changes
    reference: dict[tuple, list[float]] = {}
    t0 = time.perf_counter()
    for level in LEVELS:
        codec = load_codec(level)
        model = codec.model
        weights = zoo.shipped_models()[level].weights
        for set_name, paths in sets.items():
            if set_name == "Kodak" and level != args.kodak_full_level:
                paths = paths[::3]
            for path in paths:
                y = decoded_latent(codec, level, path, cache)
                original = open_image(path).convert("RGB")
                with torch.inference_mode():
                    ref = decoded_psnr(synthesise(model, y.clone(), None, None), original)
                    reference.setdefault((set_name, level), []).append(ref)
                    for index in inserts:
                        feats = run_layers(model, y.clone(), 0, index + 1, True)
                        for name, (layer, _) in layers[(weights, index)].items():
                            x_hat = synthesis_tail(model, layer(feats), y, index)
                            got = decoded_psnr(x_hat, original)
                            deltas.setdefault((set_name, level, index, name), []).append(got - ref)
    print(f"\nevaluation (coding included) {time.perf_counter() - t0:.0f} s")
    for (set_name, level), values in reference.items():
        print(
            f"  {set_name} q{level}: {len(values)} images, unmodified decoder PSNR "
            f"{sum(values) / len(values):.3f} dB"
        )

    # synthesis time: kodim23 at level 5, tiled as Codec.decode runs it
    codec = load_codec(5)
    model = codec.model
    weights = zoo.shipped_models()[5].weights
    timed = next((p for p in kodak if p.stem == "kodim23"), kodak[-1])
    y = decoded_latent(codec, 5, timed, cache)
    variants = [("float32", None, None)] + [
        (name, index, layer)
        for index in inserts
        for name, (layer, _) in layers[(weights, index)].items()
    ]
    seconds: dict[tuple, float] = {}
    with torch.inference_mode():
        for r in range(args.rounds):
            for name, index, layer in variants if r % 2 == 0 else variants[::-1]:
                t = time.perf_counter()
                tiled_synthesis(
                    lambda t, index=index, layer=layer: synthesise(model, t, index, layer),
                    y,
                    stride=model.config.bottom_stride,
                )
                key = (name, index)
                seconds[key] = min(seconds.get(key, math.inf), time.perf_counter() - t)
    base = seconds[("float32", None)]
    print(f"synthesis of {timed.name} at q5: {base:.3f} s unmodified (best of {args.rounds})")

    def cell(key) -> str:
        values = deltas.get(key)
        return f"{sum(values) / len(values):+.3f}" if values else "-"

    counts = " ".join(
        f"{s}: " + "/".join(str(len(reference.get((s, q), []))) for q in LEVELS) for s in sets
    )
    print(f"\nPSNR change (dB) against the unmodified decoder; images per level q1/q5/q9: {counts}")
    print(
        "\n| insertion point | storage | bytes/element | Kodak q1 | Kodak q5 | Kodak q9 "
        "| held-out q1 | held-out q5 | held-out q9 | synthesis time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for index in inserts:
        where = f"after g_s[{index}]"
        print(f"| {where} | float32 | 4 | 0 | 0 | 0 | 0 | 0 | 0 | 1.00x |")
        for name, (_, per_element) in layers[(weights, index)].items():
            cells = [cell(("Kodak", q, index, name)) for q in LEVELS]
            cells += [cell(("held-out", q, index, name)) for q in LEVELS]
            ratio = seconds[(name, index)] / base
            print(
                f"| {where} | {name} | {per_element:g} | "
                + " | ".join(cells)
                + f" | {ratio:.2f}x |"
            )


if __name__ == "__main__":
    main()
