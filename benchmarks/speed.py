"""Encode/decode speed and peak memory of dqcodec against CompressAI baselines.

Run by hand (not part of the tests), on an otherwise idle machine:

    python benchmarks/speed.py                        # kodim23 (768x512)
    python benchmarks/speed.py --large --skip-slow    # + a 3840x2160 image, no mbt2018 on it
    python benchmarks/speed.py --runs 1 --max-side 256 --large   # quick smoke run

For each codec and image it reports the median wall time of its encodes and decodes: the
codecs take turns in `--rounds` rounds, each a fresh process ('spawn') of one codec that runs
one warm-up and `--runs` timed runs, so that no codec inherits another's memory layout and all
share the machine's slower and faster spells; torch on `--threads` threads. And the peak
resident memory of one encode and of one decode, each in a fresh child process ('spawn'; the
peak read in the child after the work; `base` is the child's peak before the work, i.e.
Python + torch + the model + the input). On Linux the peak is the child's VmHWM
from /proc/self/status: its `ru_maxrss` (also saved in the JSON) starts at the parent's
peak, which the kernel carries over fork and exec, so it would report this process's size.

Codecs:
  dqcodec     `Codec.encode_image` / `Codec.decode` (pixels <-> .dq bytes; decoding runs the
              NumPy decoder, numpy_decoder/), with --model FILE,
              else the shipped default model, else a random-weight `DQModel()` (said so);
              --effort N times the encoder search (dqcodec encode --effort N).
  dqcodec-float  the same model with the float prior (format version 1 files): what the
              integer prior costs in time.
  hyperprior  CompressAI `bmshj2018_hyperprior(quality=4)`, random weights.
  mbt2018     CompressAI `mbt2018(quality=4)`, random weights; its autoregressive
              context model is coded one latent position at a time (minutes on a 4K image:
              --skip-slow leaves it out on the large image).
The CompressAI models run `.update(force=True)` then `.compress(x)` / `.decompress(strings,
shape)` on the image padded to a multiple of 64; their encode/decode times include the same
PIL <-> tensor conversions as dqcodec's. With random weights their bitstreams (and hence
entropy-coding times) are not those of trained models; the network cost is the same.

For dqcodec the range coder's share of the time is measured by wrapping
`IndexEncoder.encode` / `IndexDecoder.decode` (dqcodec.range_coding) with timers; the
share includes building the probability tables (softmax -> float64 numpy), which is also
reported on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

from child_process import in_child, maxrss_mb, peak_mb

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}
LARGE_SIZE = (3840, 2160)
CODECS = ("dqcodec", "dqcodec-float", "hyperprior", "mbt2018")

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.script in compressai


# --------------------------------------------------------------------------- codecs


class DQAdapter:
    name = "dqcodec"

    def __init__(self, model_path: str | None, effort: int, float_prior: bool = False):
        import torch

        from dqcodec import codec as dqc
        from dqcodec import zoo
        from dqcodec.errors import DQError
        from dqcodec.models.dq import DQModel

        if model_path is not None:
            self.codec = dqc.Codec(zoo.read_model_file(Path(model_path)))
            self.label = f"model {model_path}"
        else:
            try:
                self.codec = dqc.load_codec()
                self.label = f"shipped model q{self.codec.quality}"
            except DQError:
                torch.manual_seed(0)
                self.codec = dqc.Codec(DQModel())
                self.label = "RANDOM weights (no shipped model)"
        if float_prior:
            c = self.codec
            self.codec = dqc.Codec(
                c.model, c.quality, c.rate_weight, c.rate_point, c.search_scale, policy=None
            )
            self.label += ", float prior"
        self.max_pixels = 1 << 40
        self.effort = effort
        self.label += f", effort {effort}"

    def encode(self, image):
        return self.codec.encode_image(image, self.effort).data

    def decode(self, data):
        return self.codec.decode(data, max_pixels=self.max_pixels)

    @staticmethod
    def size(payload) -> int:
        return len(payload)


class CompressAIAdapter:
    def __init__(self, name: str, quality: int = 4):
        import torch
        from compressai.zoo import bmshj2018_hyperprior, mbt2018

        build = {"hyperprior": bmshj2018_hyperprior, "mbt2018": mbt2018}[name]
        self.name = name
        torch.manual_seed(0)  # the same random weights in every process
        self.net = build(quality=quality, pretrained=False).eval()
        self.net.update(force=True)
        self.label = f"{build.__name__}(quality={quality}), RANDOM weights"

    def encode(self, image):
        import torch

        from dqcodec.image_io import to_tensor
        from dqcodec.models.dq import pad_to_stride

        with torch.inference_mode():
            x = pad_to_stride(to_tensor(image.convert("RGB")), 64)
            out = self.net.compress(x)
        return out["strings"], tuple(out["shape"]), (image.height, image.width)

    def decode(self, payload):
        import torch

        from dqcodec.image_io import to_image

        strings, shape, (h, w) = payload
        with torch.inference_mode():
            x_hat = self.net.decompress(strings, shape)["x_hat"]
            return to_image(x_hat[..., :h, :w])

    @staticmethod
    def size(payload) -> int:
        def total(s):
            return len(s) if isinstance(s, (bytes, bytearray)) else sum(total(t) for t in s)

        return total(payload[0])


def make_codec(name: str, model_path: str | None, effort: int):
    if name.startswith("dqcodec"):
        return DQAdapter(model_path, effort, float_prior=name == "dqcodec-float")
    return CompressAIAdapter(name)


# --------------------------------------------------------------------------- memory child


def _child(
    queue, what: str, name: str, model_path: str | None, threads: int, arg, effort: int
) -> None:
    try:
        from dqcodec.runtime import start_command

        start_command(threads)  # as a dqcodec command does: before NumPy and torch load
        codec = make_codec(name, model_path, effort)
        base = peak_mb()
        t0 = time.perf_counter()
        result = codec.encode(arg) if what == "encode" else codec.decode(arg)
        seconds = time.perf_counter() - t0
        peak = peak_mb()
        del result
        queue.put(
            {
                "ok": True,
                "peak_mb": peak,
                "base_mb": base,
                "seconds": seconds,
                "ru_maxrss_mb": maxrss_mb(),
            }
        )
    except BaseException as exc:  # report, don't hang the parent
        queue.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def peak_memory(
    what: str, name: str, model_path: str | None, threads: int, arg, effort: int
) -> dict:
    result = in_child(_child, what, name, model_path, threads, arg, effort)
    if not result["ok"]:
        print(f"  ! {name} {what} child failed: {result['error']}", file=sys.stderr)
    return result


# --------------------------------------------------------------------------- range-coder timers


class CoderTimers:
    """Wraps IndexEncoder.encode / IndexDecoder.decode / probability_table with timers."""

    def __init__(self):
        from dqcodec import range_coding as rc

        self.rc = rc
        self.totals = {"encode": 0.0, "decode": 0.0, "probability_table": 0.0}
        self.saved = (rc.IndexEncoder.encode, rc.IndexDecoder.decode, rc.probability_table)

    def _wrap(self, fn, key):
        totals = self.totals

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[key] += time.perf_counter() - t0

        return timed

    def __enter__(self):
        enc, dec, table = self.saved
        self.rc.IndexEncoder.encode = self._wrap(enc, "encode")
        self.rc.IndexDecoder.decode = self._wrap(dec, "decode")
        self.rc.probability_table = self._wrap(
            table, "probability_table"
        )  # global in encode/decode
        return self

    def __exit__(self, *exc):
        self.rc.IndexEncoder.encode, self.rc.IndexDecoder.decode, self.rc.probability_table = (
            self.saved
        )

    def reset(self):
        for key in self.totals:
            self.totals[key] = 0.0


# --------------------------------------------------------------------------- images


def center_crop(image, max_side: int | None):
    if not max_side or (image.width <= max_side and image.height <= max_side):
        return image
    w, h = min(image.width, max_side), min(image.height, max_side)
    left, top = (image.width - w) // 2, (image.height - h) // 2
    return image.crop((left, top, left + w, top + h))


def load_images(args) -> list[tuple[str, object]]:
    from PIL import Image, ImageOps

    def read(path: Path):
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im).convert("RGB")

    path = Path(args.image) if args.image else Path(args.kodak_dir) / args.kodak_image
    if not path.is_file():
        sys.exit(f"no such image: {path} (pass --image or --kodak-dir)")
    images = [(path.name, read(path))]
    if args.large:
        if args.large_source:
            source = Path(args.large_source)
        else:
            photos = sorted(
                p for p in Path(args.train_dir).iterdir() if p.suffix.lower() in SUFFIXES
            )
            if not photos:
                sys.exit(f"no photo in {args.train_dir} to build the large image from")
            source = photos[0]
        large = ImageOps.fit(read(source), LARGE_SIZE, method=Image.Resampling.LANCZOS)
        images.append((f"{source.stem}@{LARGE_SIZE[0]}x{LARGE_SIZE[1]}", large))
    return [
        (f"{name}[crop{args.max_side}]" if args.max_side else name, center_crop(im, args.max_side))
        for name, im in images
    ]


# --------------------------------------------------------------------------- main


@dataclass
class Samples:
    """One codec's timings on one image, run by run, and its last payload (with its size in
    bytes) and label, as a timing child reports them."""

    enc: list = field(default_factory=list)
    dec: list = field(default_factory=list)
    coder_enc: list = field(default_factory=list)
    coder_dec: list = field(default_factory=list)
    tables_enc: list = field(default_factory=list)
    tables_dec: list = field(default_factory=list)
    payload: object = b""
    size: int = 0
    label: str = ""

    def extend(self, other: Samples) -> None:
        """Append other's timings (the list fields); take its payload, size and label."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, list):
                mine.extend(theirs)
            else:
                setattr(self, f.name, theirs)


def time_run(codec, image, timers: CoderTimers | None, samples: Samples) -> None:
    if timers:
        timers.reset()
    t0 = time.perf_counter()
    samples.payload = codec.encode(image)
    samples.enc.append(time.perf_counter() - t0)
    if timers:
        samples.coder_enc.append(timers.totals["encode"])
        samples.tables_enc.append(timers.totals["probability_table"])
        timers.reset()
    t0 = time.perf_counter()
    codec.decode(samples.payload)
    samples.dec.append(time.perf_counter() - t0)
    if timers:
        samples.coder_dec.append(timers.totals["decode"])
        samples.tables_dec.append(timers.totals["probability_table"])


def summary(image, s: Samples) -> dict:
    out = {
        "encode_s": statistics.median(s.enc),
        "decode_s": statistics.median(s.dec),
        "encode_runs_s": s.enc,
        "decode_runs_s": s.dec,
        "bpp": s.size * 8 / (image.width * image.height),
        "payload": s.payload,
    }
    if s.coder_enc:
        out["range_coder"] = {
            "encode_share": sum(s.coder_enc) / sum(s.enc),
            "decode_share": sum(s.coder_dec) / sum(s.dec),
            "encode_s": statistics.median(s.coder_enc),
            "decode_s": statistics.median(s.coder_dec),
            "probability_table_encode_s": statistics.median(s.tables_enc),
            "probability_table_decode_s": statistics.median(s.tables_dec),
        }
    return out


def _timing_child(
    queue, name: str, model_path: str | None, threads: int | None, image, runs: int, effort: int
) -> None:
    try:
        from dqcodec.runtime import start_command

        start_command(threads)  # as a dqcodec command does: before NumPy and torch load
        codec = make_codec(name, model_path, effort)
        decoded = codec.decode(codec.encode(image))  # warm-up
        if decoded.size != image.size:
            raise RuntimeError(f"{name}: decoded size {decoded.size} != {image.size}")
        samples = Samples(label=codec.label)
        timers = CoderTimers() if name == "dqcodec" else None
        with timers or contextlib.nullcontext():
            for _ in range(runs):
                time_run(codec, image, timers, samples)
        samples.size = codec.size(samples.payload)
        queue.put({"ok": True, "samples": samples})
    except BaseException as exc:  # report, don't hang the parent
        queue.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def time_codecs(
    names: list,
    image,
    runs: int,
    rounds: int,
    model_path: str | None,
    threads: int | None,
    effort: int,
) -> dict:
    """Each named codec's Samples on one image; threads: --threads (None: each process
    chooses from the load, as a command does). Each codec is timed in a process of its own
    (a warm-up, then `runs` timed runs), so that none inherits another's memory layout: in
    one shared process the hyperprior's kodim23 encode took 0.22-0.29 s depending on what
    ran before it. The codecs take `rounds` turns, so a slower spell of a shared machine
    falls on all of them alike."""
    samples = {name: Samples() for name in names}
    for _ in range(rounds):
        for name in names:
            result = in_child(_timing_child, name, model_path, threads, image, runs, effort)
            if not result["ok"]:
                raise RuntimeError(f"{name} timing child failed: {result['error']}")
            samples[name].extend(result["samples"])
    return samples


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def busy_core(enabled: bool):
    """With enabled, another process keeps one core busy (a spinning loop) meanwhile."""
    if not enabled:
        yield
        return
    spinner = mp.get_context("spawn").Process(target=_spin, daemon=True)
    spinner.start()
    time.sleep(1.0)  # until it spins
    try:
        yield
    finally:
        spinner.terminate()
        spinner.join()


def fmt(value, spec=".3f"):
    return "n/a" if value is None else format(value, spec)


def main(argv=None) -> int:
    from dqcodec.models.encoder_search import (
        DEFAULT_EFFORT,
    )  # dqcodec (torch) loads lazily, as in the adapters

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", help="image to code (default: --kodak-image from --kodak-dir)")
    parser.add_argument(
        "--kodak-dir", default=os.path.relpath(REPO.parent / "shared" / "data" / "kodak")
    )
    parser.add_argument("--kodak-image", default="kodim23.png")
    parser.add_argument(
        "--large",
        action="store_true",
        help=f"also a {LARGE_SIZE[0]}x{LARGE_SIZE[1]} image upscaled (LANCZOS) from a photo",
    )
    parser.add_argument(
        "--train-dir",
        default=os.path.relpath(REPO.parent / "shared" / "data" / "train"),
        help="where the large image's source photo comes from (first by name)",
    )
    parser.add_argument("--large-source", help="the photo to upscale for --large")
    parser.add_argument("--max-side", type=int, help="center-crop every image to at most this side")
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="timed runs per round, after one warm-up (each round a fresh process per codec)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds in which the codecs take turns (default 3); the median is over all runs",
    )
    parser.add_argument("--model", help="dqcodec model file (default: the shipped default model)")
    parser.add_argument(
        "--codecs", default=",".join(CODECS), help="comma-separated subset of " + ", ".join(CODECS)
    )
    parser.add_argument("--skip-slow", action="store_true", help="skip mbt2018 on the large image")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument(
        "--effort",
        type=int,
        default=DEFAULT_EFFORT,
        help=f"dqcodec's encoder search level (default {DEFAULT_EFFORT}, as `dqcodec encode`)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help=(
            "torch threads (default: as a dqcodec command chooses: the cores this process may use)"
        ),
    )
    parser.add_argument(
        "--busy",
        action="store_true",
        help="time every codec twice: on the idle machine, then with one core kept busy "
        "by another process (a spinning loop), and print busy/idle",
    )
    parser.add_argument("--json", help="save the results to this file")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rounds < 1:
        parser.error("--runs and --rounds must be >= 1")
    names = [n.strip() for n in args.codecs.split(",") if n.strip()]
    if unknown := set(names) - set(CODECS):
        parser.error(f"unknown codec(s): {', '.join(sorted(unknown))}")

    import torch

    from dqcodec.runtime import thread_count

    torch.set_num_threads(thread_count(args.threads))  # each timing child chooses its own
    images = load_images(args)
    large_names = {images[-1][0]} if args.large else set()

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}; {args.rounds} round(s) of a warm-up "
        f"and {args.runs} timed run(s)"
    )
    labels = {}  # each codec as its timing children describe it
    rows = []
    for image_name, image in images:
        timed = [
            name
            for name in names
            if not (name == "mbt2018" and args.skip_slow and image_name in large_names)
        ]
        if len(timed) < len(names):
            print(f"mbt2018 on {image_name}: skipped (--skip-slow)")
        print(
            f"{', '.join(timed)} on {image_name} ({image.width}x{image.height}), "
            f"{args.rounds} round(s) ...",
            flush=True,
        )
        loads = ("idle", "busy") if args.busy else ("idle",)
        timings = []
        for load in loads:
            with busy_core(load == "busy"):
                # the count a dqcodec command would choose now, as each timing child does
                print(f"  {load}: {thread_count(args.threads)} thread(s)", flush=True)
                timings += [
                    (load, name, samples)
                    for name, samples in time_codecs(
                        timed, image, args.runs, args.rounds, args.model, args.threads, args.effort
                    ).items()
                ]
        for load, name, samples in timings:
            if name not in labels:
                labels[name] = samples.label
                print(f"  {name}: {samples.label}")
            row = summary(image, samples)
            row["load"] = load
            payload = row.pop("payload")
            if load == "busy":
                row.update(codec=name, image=image_name, width=image.width, height=image.height)
                rows.append(row)
                continue
            if not args.no_memory:
                row["memory_encode"] = peak_memory(
                    "encode", name, args.model, args.threads, image, args.effort
                )
                row["memory_decode"] = peak_memory(
                    "decode", name, args.model, args.threads, payload, args.effort
                )
            row.update(codec=name, image=image_name, width=image.width, height=image.height)
            rows.append(row)

    def mem(row, what, key="peak_mb"):
        m = row.get(f"memory_{what}")
        return m[key] if m and m.get("ok") else None

    print()
    header = (
        f"{'codec':<11} {'image':<34} {'bpp':>6} {'encode s':>9} {'decode s':>9} "
        f"{'peak MB enc':>11} {'peak MB dec':>11} {'base MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if r["load"] == "busy":
            continue
        print(
            f"{r['codec']:<11} {r['image'][:34]:<34} {r['bpp']:>6.3f} {r['encode_s']:>9.3f} "
            f"{r['decode_s']:>9.3f} {fmt(mem(r, 'encode'), '.0f'):>11} "
            f"{fmt(mem(r, 'decode'), '.0f'):>11} {fmt(mem(r, 'decode', 'base_mb'), '.0f'):>8}"
        )

    ratios = []
    by_key = {(r["codec"], r["image"]): r for r in rows if r["load"] == "idle"}
    busy = [r for r in rows if r["load"] == "busy"]
    if busy:
        print("\nwith one core kept busy by another process:")
        for r in busy:
            idle = by_key[(r["codec"], r["image"])]
            print(
                f"  {r['codec']:<14} {r['image'][:30]:<30} encode {r['encode_s']:.3f} s "
                f"({r['encode_s'] / idle['encode_s']:.2f}x idle), decode {r['decode_s']:.3f} s "
                f"({r['decode_s'] / idle['decode_s']:.2f}x idle)"
            )
    for image_name, _ in images:
        dq = by_key.get(("dqcodec", image_name))
        if dq is None:
            continue
        for other in ("dqcodec-float", "hyperprior", "mbt2018"):
            o = by_key.get((other, image_name))

            def ratio(a, b):
                return a / b if a is not None and b else None

            ratios.append(
                {
                    "image": image_name,
                    "versus": other,
                    "encode": ratio(dq["encode_s"], o and o["encode_s"]),
                    "decode": ratio(dq["decode_s"], o and o["decode_s"]),
                    "peak_encode": ratio(mem(dq, "encode"), o and mem(o, "encode")),
                    "peak_decode": ratio(mem(dq, "decode"), o and mem(o, "decode")),
                }
            )
    if ratios:
        print(
            f"\n{'ratio':<22} {'image':<34} {'encode':>7} {'decode':>7} "
            f"{'peak enc':>9} {'peak dec':>9}"
        )
        for q in ratios:
            print(
                f"{'dqcodec/' + q['versus']:<22} {q['image'][:34]:<34} "
                f"{fmt(q['encode'], '.2f'):>7} "
                f"{fmt(q['decode'], '.2f'):>7} {fmt(q['peak_encode'], '.2f'):>9} "
                f"{fmt(q['peak_decode'], '.2f'):>9}"
            )

    for r in (r for r in rows if r["load"] == "idle"):
        if "range_coder" in r and r["codec"] == "dqcodec":
            c = r["range_coder"]
            print(
                f"\ndqcodec range coder on {r['image']}: "
                f"encode {c['encode_share']:.1%} of the time "
                f"({c['encode_s']:.3f} s, of which probability tables "
                f"{c['probability_table_encode_s']:.3f} s), "
                f"decode {c['decode_share']:.1%} ({c['decode_s']:.3f} s, tables "
                f"{c['probability_table_decode_s']:.3f} s); networks and the rest: "
                f"{1 - c['encode_share']:.1%} / {1 - c['decode_share']:.1%}"
            )
        if r["codec"] == "dqcodec" and (r["width"], r["height"]) == LARGE_SIZE:
            peak = mem(r, "decode")
            if peak is not None:
                print(
                    f"4K decode peak RSS {peak:.0f} MB: "
                    f"{'within' if peak < 2048 else 'OVER'} the 2048 MB target"
                )

    if args.json:
        result = {
            "args": vars(args),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "codecs": labels,
            "rows": rows,
            "ratios": ratios,
        }
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"\nsaved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
