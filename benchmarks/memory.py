"""Peak memory and time of decoding large images: the NumPy decoder against the torch paths.

Run by hand (not part of the tests); it prints figures:

    python benchmarks/memory.py                       # 3840x2160 and 6000x4000, 1 round
    python benchmarks/memory.py --rounds 2 --variants old,torch,new,new-tile16
    python benchmarks/memory.py --sizes 768x512 --variants old,new --rounds 3   # small images
    python benchmarks/memory.py --variants new --rounds 2 --baseline ../dq-0.2.0   # vs 0.2.0

Test images are one training photo (never Kodak) cropped to the aspect ratio and upscaled
with LANCZOS, encoded once with the shipped default quality (as `dqcodec encode -q 5`) into
--workdir and reused. Every measurement is a fresh 'spawn' child process on --threads
threads; the variants take turns within each round. In the child: `base` is VmRSS after
Python, the libraries the variant needs (torch only for the torch variants), the model and
its integer prior are loaded; a thread samples VmRSS every 2 ms and keeps the peak of each
stage (prior: both levels' indices; top_s with the synthesis input; synthesis + pixels; PNG
writing); `peak` is the child's VmHWM after the decode (the whole process), `png` its VmHWM
after writing the PNG too. PSNR is against the upscaled original; `max|d|` is the largest
pixel difference from the `old` (or `baseline`) variant's image of the same round.

Variants:
  new        the NumPy decoder (what dqcodec decode uses up to 4 megapixels): no torch, the
             integer prior's parameters in bands of rows, each synthesis tile turned into
             8-bit pixels and written into the image at once.
  new-tileN  new with synthesis tiles of N latents (default 32).
  new-mmapN  new with glibc's mmap threshold fixed at N KiB (mallopt) before decoding, so
             freed large blocks go back to the system instead of fragmenting the heap.
  torch      the torch model's decode (Codec.decode; dqcodec decode above 4 megapixels):
             DQModel.decompress with the integer prior, in-place banded inverse GDNs, each
             tile pasted into the image.
  torch-bf16 torch with the synthesis under CPU bf16 autocast (bf16 feature maps).
  old        the torch whole-image decode: nn.Sequential g_s per tile into a full float
             (3, H, W) image, clamp, to_image, PIL image.
  baseline   with --baseline DIR: Codec.decode of the dqcodec of DIR, a checkout of an
             earlier commit (`git worktree add DIR 96d1814` for release 0.2.0). When it runs,
             the time ratio and max|d| are against it instead of `old`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from child_process import in_child, status_mb

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO.parent / "shared" / "data" / "train"
PHOTO = "unsplash_rachel-hisko-rEM3cK8F1pk-unsplash.jpg"  # 1500x1000, a 3:2 photo
TARGETS_MB = {(3840, 2160): 1000, (6000, 4000): 1200}


class Sampler:
    """Peak VmRSS per named stage, sampled every 2 ms by a thread."""

    def __init__(self):
        self.stage, self.peaks, self.stop = "start", {}, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _note(self):
        self.peaks[self.stage] = max(self.peaks.get(self.stage, 0.0), status_mb("VmRSS"))

    def _run(self):
        while not self.stop:
            self._note()
            time.sleep(0.002)

    def set(self, stage: str):
        self._note()
        self.stage = stage

    def close(self) -> dict:
        self._note()
        self.stop = True
        self.thread.join()
        return self.peaks


def make_image(photo: Path, size: tuple[int, int], out: Path) -> None:
    from PIL import Image, ImageOps

    with Image.open(photo) as im:
        ImageOps.fit(im.convert("RGB"), size, method=Image.Resampling.LANCZOS).save(out)


def _encode_child(queue, png: str, dq: str, threads: int) -> None:
    import torch

    from dqcodec.codec import load_codec
    from dqcodec.image_io import open_image

    torch.set_num_threads(threads)
    Path(dq).write_bytes(load_codec(5).encode(open_image(png)))
    queue.put({"ok": True})


def old_decode(codec, data: bytes, sampler: Sampler):
    """The whole-image decode (RGB files), stage by stage."""
    import torch

    from dqcodec.container import DQFile
    from dqcodec.image_io import to_image
    from dqcodec.models.dq import _integer_level
    from dqcodec.models.tiling import tiled_synthesis

    model = codec.model
    dq = DQFile.from_bytes(data)
    integer = codec.integer_model(dq.rate_point)
    with torch.inference_mode():
        shape = (-(-dq.height // codec.stride), -(-dq.width // codec.stride))
        point = model._points(1, dq.rate_point, None)
        ones = torch.ones(1, 1, *shape)
        sampler.set("prior")
        top = model.top.decompress(dq.top, ones, point, _integer_level(integer, True, ones, None))
        sampler.set("top_s")
        cond = model.condition_from_top(top["y_hat"], point)
        sampler.set("prior")
        bottom = model.bottom.decompress(
            dq.bottom, cond, point, _integer_level(integer, False, cond, top)
        )
        sampler.set("synthesis+pixels")
        y = torch.cat([model._unscaled(bottom["y_hat"], model._gain("bottom", point)), cond], 1)
        y = y.contiguous(memory_format=torch.channels_last)
        x_hat = tiled_synthesis(model.synthesise, y, stride=model.config.bottom_stride)
        x_hat = x_hat.clamp_(0, 1)
        return to_image(x_hat[..., : dq.height, : dq.width])


def new_decode(decoder, data: bytes, sampler: Sampler, tile: int = 32):
    """The NumPy decoder (dqcodec decode), with the stages marked (and optionally other tiles)."""
    synthesis = decoder.synthesis
    indices, condition, tiled = decoder.decode_indices, synthesis.condition, synthesis.tiled

    def staged(stage, f):
        def g(*args, **kwargs):
            sampler.set(stage)
            return f(*args, **kwargs)

        return g

    decoder.decode_indices = staged("prior", indices)
    synthesis.condition = staged("top_s", condition)
    synthesis.tiled = staged("synthesis+pixels", lambda y, write: tiled(y, write, tile))
    try:
        return decoder.decode(data, 1 << 40)
    finally:
        del decoder.decode_indices, synthesis.condition, synthesis.tiled


def torch_decode(codec, data: bytes, sampler: Sampler, bf16: bool = False):
    """The torch model's tile-to-pixels decode (DQModel.decompress, the integer prior, each
    synthesis tile pasted into the image), with the stages marked (optionally bf16)."""
    import torch

    from dqcodec.codec import TileWriter
    from dqcodec.container import DQFile
    from dqcodec.models import dq as dq_module

    model = codec.model
    top_d, bottom_d = model.top.decompress, model.bottom.decompress
    top_s = model.condition_from_top
    tiled = dq_module.tiled_synthesis

    def staged(stage, f):
        def g(*args, **kwargs):
            sampler.set(stage)
            return f(*args, **kwargs)

        return g

    def synthesis(g_s, y, stride, write):
        sampler.set("synthesis+pixels")
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return tiled(lambda t: g_s(t).float(), y.to(torch.bfloat16), stride, write=write)
        return tiled(g_s, y, stride, write=write)

    model.top.decompress = staged("prior", top_d)
    model.condition_from_top = staged("top_s", top_s)
    model.bottom.decompress = staged("prior", bottom_d)
    dq_module.tiled_synthesis = synthesis
    dq = DQFile.from_bytes(data)
    shape = (-(-dq.height // codec.stride), -(-dq.width // codec.stride))
    rgb = TileWriter(dq.width, dq.height)
    try:
        with torch.inference_mode():
            model.decompress(
                [dq.top, dq.bottom],
                shape,
                dq.rate_point,
                integer=codec.integer_model(dq.rate_point),
                write=rgb,
            )
        return rgb.image
    finally:
        dq_module.tiled_synthesis = tiled
        del model.top.decompress, model.bottom.decompress, model.condition_from_top


def _decode_child(
    queue, variant: str, dq_path: str, png: str, out: str, threads: int, baseline: str
) -> None:
    try:
        sampler = Sampler()
        if variant == "baseline":
            sys.path.insert(0, baseline)  # the earlier checkout's dqcodec
        from dqcodec import runtime

        # before NumPy and torch load, as that checkout's command does
        getattr(runtime, "start_command", runtime.use_threads)(threads)
        import numpy as np
        from PIL import Image

        from dqcodec.container import DQFile

        data = Path(dq_path).read_bytes()
        point = DQFile.from_bytes(data).rate_point
        on_torch = variant in ("old", "torch", "torch-bf16", "baseline")
        if on_torch:
            from dqcodec.codec import codec_for_file

            decoder = codec_for_file(data)
        else:  # the NumPy decoder, whatever the size (dqcodec decode takes it up to 4 MP)
            from dqcodec import zoo
            from dqcodec.decoding import load_decoder

            quality = DQFile.from_bytes(data).quality
            decoder = load_decoder(str(zoo.shipped_models()[quality].weights))
        decoder.integer_model(point)
        if variant.startswith("new-mmap"):
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, int(variant[len("new-mmap") :]) * 1024)  # M_MMAP_THRESHOLD
        base = status_mb("VmRSS")
        sampler.set("base")
        t0 = time.perf_counter()
        if variant == "old":
            image = old_decode(decoder, data, sampler)
        elif variant == "baseline":
            image = decoder.decode(data, max_pixels=1 << 40)
        elif variant.startswith("torch"):
            image = torch_decode(decoder, data, sampler, bf16=variant == "torch-bf16")
        elif variant.startswith("new-tile"):
            image = new_decode(decoder, data, sampler, tile=int(variant[len("new-tile") :]))
        else:
            image = new_decode(decoder, data, sampler)
        seconds = time.perf_counter() - t0
        peak = status_mb("VmHWM")
        sampler.set("png")
        t1 = time.perf_counter()
        image.save(out + ".png")
        png_seconds = time.perf_counter() - t1
        png_peak = status_mb("VmHWM")
        stages = sampler.close()
        decoded = np.asarray(image)
        np.save(out + ".npy", decoded)
        with Image.open(png) as im:
            original = np.asarray(im.convert("RGB"))
        mse = np.mean((decoded.astype(np.float64) - original) ** 2)
        queue.put(
            {
                "ok": True,
                "base": base,
                "peak": peak,
                "png_peak": png_peak,
                "seconds": seconds,
                "png_seconds": png_seconds,
                "psnr": 10 * np.log10(255.0**2 / mse),
                "stages": stages,
            }
        )
    except BaseException as exc:  # report, don't hang the parent
        queue.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def fixed_point_table(dq_path: Path, png: Path, bits: list[int], threads: int) -> None:
    """Feasibility bound for storing the activation after the second inverse GDN as plain
    fixed point (no learning): per-channel min/max of the map, `b`-bit uniform levels. The
    GF(2) seed method (Gudovskiy et al. 2018) must beat these bytes at the same PSNR."""
    import numpy as np
    import torch
    from PIL import Image

    from dqcodec.codec import codec_for_file
    from dqcodec.container import DQFile
    from dqcodec.layers import GDN
    from dqcodec.models.tiling import tiled_synthesis

    torch.set_num_threads(threads)
    data = dq_path.read_bytes()
    codec, dq = codec_for_file(data), DQFile.from_bytes(data)
    model = codec.model
    with Image.open(png) as im:
        original = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).double()

    def psnr(x_hat: torch.Tensor) -> float:
        pixels = (x_hat[0, :, : dq.height, : dq.width].clamp(0, 1) * 255).round()
        mse = (pixels.permute(1, 2, 0).double() - original).pow(2).mean().item()
        return 10 * np.log10(255.0**2 / mse)

    def run(y: torch.Tensor, b: int | None) -> torch.Tensor:
        x = y
        for i, layer in enumerate(model.g_s):
            x = layer.forward_(x) if isinstance(layer, GDN) else layer(x)
            if i == 3 and b is not None:  # after the second inverse GDN
                lo = x.amin((0, 2, 3), keepdim=True)
                step = (x.amax((0, 2, 3), keepdim=True) - lo).clamp_min(1e-12) / (2**b - 1)
                x = ((x - lo) / step).round_().mul_(step).add_(lo)
        return x

    with torch.inference_mode():
        shape = (-(-dq.height // codec.stride), -(-dq.width // codec.stride))
        integer = codec.integer_model(dq.rate_point)
        y = model.decode_latents([dq.top, dq.bottom], shape, dq.rate_point, integer)["y"]
        reference = psnr(tiled_synthesis(lambda t: run(t, None), y))
        print(f"\nfixed point after the second inverse GDN, {dq.width}x{dq.height}")
        print(f"{'storage':<10}{'bytes/element':>14}{'PSNR dB':>9}{'change dB':>10}")
        print(f"{'float32':<10}{4:>14}{reference:>9.3f}{0:>10.3f}")
        for b in bits:
            got = psnr(tiled_synthesis(lambda t, b=b: run(t, b), y))
            print(f"{f'{b}-bit':<10}{b / 8:>14.3g}{got:>9.3f}{got - reference:>10.3f}")


def checked(result: dict) -> dict:
    if not result["ok"]:
        raise RuntimeError(result["error"])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-dir", type=Path, default=TRAIN)
    ap.add_argument("--photo", default=PHOTO, help="file in --train-dir to upscale")
    ap.add_argument("--sizes", default="3840x2160,6000x4000")
    ap.add_argument("--variants", default="old,new")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "dq-memory")
    ap.add_argument("--stages", action="store_true", help="print each stage's peak RSS")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of an earlier commit: adds the variant `baseline`, decoded with its "
        "dqcodec, and compares the others with it",
    )
    ap.add_argument(
        "--fixed-point",
        default="",
        help="e.g. 4,8: instead, PSNR with the activation after the second inverse GDN stored "
        "at these bit widths (the first size only)",
    )
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    photo = args.train_dir / args.photo
    variants = args.variants.split(",")
    if args.baseline and "baseline" not in variants:
        variants.insert(0, "baseline")
    reference = "baseline" if "baseline" in variants else "old"
    print(f"photo {photo}; {args.threads} thread(s); {args.rounds} round(s); {args.workdir}")
    if args.fixed_point:
        size_text = args.sizes.split(",")[0]
        png, dq = args.workdir / f"{size_text}.png", args.workdir / f"{size_text}.dq"
        if not png.exists():
            make_image(photo, tuple(int(v) for v in size_text.split("x")), png)
        if not dq.exists():
            checked(in_child(_encode_child, str(png), str(dq), args.threads))
        bits = [int(b) for b in args.fixed_point.split(",")]
        fixed_point_table(dq, png, bits, args.threads)
        return
    for size_text in args.sizes.split(","):
        size = tuple(int(v) for v in size_text.split("x"))
        png = args.workdir / f"{size_text}.png"
        dq = args.workdir / f"{size_text}.dq"
        if not png.exists():
            make_image(photo, size, png)
        if not dq.exists():
            checked(in_child(_encode_child, str(png), str(dq), args.threads))
        runs = {v: [] for v in variants}
        for r in range(args.rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for v in order:
                out = str(args.workdir / f"{size_text}-{v}")
                runs[v].append(
                    checked(
                        in_child(
                            _decode_child,
                            v,
                            str(dq),
                            str(png),
                            out,
                            args.threads,
                            str(args.baseline.resolve()) if args.baseline else "",
                        )
                    )
                )
            if reference in variants:
                import numpy as np

                ref = np.load(args.workdir / f"{size_text}-{reference}.npy").astype(np.int16)
                for v in variants:
                    got = np.load(args.workdir / f"{size_text}-{v}.npy").astype(np.int16)
                    runs[v][-1]["maxdiff"] = int(np.abs(got - ref).max())
        target = TARGETS_MB.get(size)
        print(f"\n{size_text} ({dq.stat().st_size} B .dq); target peak {target} MB")
        print(
            f"{'variant':<13}{'base MB':>8}{'peak MB':>9}{'+png MB':>9}{'decode s':>10}"
            f"{'vs ' + reference[:4]:>8}{'png s':>7}{'PSNR dB':>9}{'max|d|':>7}  target"
        )
        ref_s = min(x["seconds"] for x in runs[reference]) if reference in runs else None
        for v in variants:
            best = min(runs[v], key=lambda x: x["seconds"])
            peak = max(x["peak"] for x in runs[v])
            png_peak = max(x["png_peak"] for x in runs[v])
            ratio = f"{best['seconds'] / ref_s:.2f}x" if ref_s else "-"
            met = "-" if target is None else ("met" if max(peak, png_peak) <= target else "no")
            print(
                f"{v:<13}{best['base']:>8.0f}{peak:>9.0f}{png_peak:>9.0f}{best['seconds']:>10.2f}"
                f"{ratio:>8}{best['png_seconds']:>7.2f}{best['psnr']:>9.3f}"
                f"{best.get('maxdiff', '-'):>7}  {met}"
            )
            if args.stages:
                stages = "; ".join(f"{k} {m:.0f}" for k, m in best["stages"].items())
                print(f"{'':13}stage peaks MB: {stages}")
    os.sync()


if __name__ == "__main__":
    main()
