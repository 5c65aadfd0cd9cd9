"""`dqcodec` commands: parse arguments, call the library, print."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

import dqcodec
from dqcodec.container import DQFile
from dqcodec.errors import DQError
from dqcodec.fileio import check_output, write_atomic, write_bytes_atomic
from dqcodec.options import (
    DEFAULT_EFFORT,
    DEFAULT_MAX_PIXELS,
    EFFORT_LEVELS,
    default_quality,
    quality_levels,
)
from dqcodec.runtime import THREADS_ENV, start_command, use_threads

# Commands import torch and the codec when they run, so --help, --version and info start fast.


def user_errors(command):
    """One line on stderr and a non-zero exit instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DQError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug, not the user's fault: still one line
            if os.environ.get("DQCODEC_DEBUG"):
                raise
            raise click.ClickException(f"internal error: {type(exc).__name__}: {exc}") from None

    return wrapper


def model_rate_point(model: Path | None, rate_point: int | None) -> int | None:
    if rate_point is not None and model is None:
        raise DQError("--rate-point needs --model (shipped models are chosen with --quality)")
    return rate_point


STDIO = Path("-")  # stdin as an input, stdout as an output


def read_bytes(path: Path) -> bytes:
    if path == STDIO:
        return sys.stdin.buffer.read()
    if not path.is_file():
        raise DQError(f"no such file: {path}")
    return path.read_bytes()


def to_stdout(write) -> None:
    """write(binary stream) to stdout (output_paths has refused a terminal)."""
    write(sys.stdout.buffer)
    sys.stdout.buffer.flush()


def output_paths(
    inputs: tuple[Path, ...], output: Path | None, outdir: Path | None, suffix: str
) -> list[Path]:
    if output is not None and outdir is not None:
        raise DQError("use either -o or -d, not both")
    if STDIO in inputs and (len(inputs) > 1 or output is None):
        raise DQError(
            "reading from stdin (-) takes a single input and -o (a file, or - for stdout)"
        )
    if output is not None:
        if len(inputs) != 1:
            raise DQError("-o takes a single input; use -d OUTDIR for several")
        if output == STDIO and sys.stdout.isatty():
            raise DQError(
                "refusing to write binary data to a terminal: redirect it or pass -o FILE"
            )
        return [output]
    if outdir is not None:
        if outdir.exists() and not outdir.is_dir():
            raise DQError(f"output folder is a file: {outdir}")
        outdir.mkdir(parents=True, exist_ok=True)
        return [outdir / (p.stem + suffix) for p in inputs]
    return [p.with_suffix(suffix) for p in inputs]


def run_batch(inputs, outputs, work) -> None:
    """Process every file; report failures as they happen and fail at the end. Several files
    show a progress bar on a terminal (stderr)."""
    from tqdm import tqdm

    failed = 0
    pairs = list(zip(inputs, outputs))
    bar = tqdm(
        pairs, unit="file", file=sys.stderr, disable=len(pairs) < 2 or not sys.stderr.isatty()
    )
    for src, dst in bar:
        configure_threads()  # per file: the machine's load may change during a batch
        try:
            work(src, dst)
        except DQError as exc:
            if len(inputs) == 1:
                raise
            failed += 1
            bar.write(f"error: {src}: {exc}", file=sys.stderr)
    if failed:
        raise DQError(f"{failed} of {len(inputs)} files failed")


def status(message: str) -> None:
    """Status lines go to stderr: stdout may carry a file."""
    click.echo(message, err=True)


EFFORT_OPTION = dict(
    type=click.IntRange(0, EFFORT_LEVELS - 1),
    default=DEFAULT_EFFORT,
    show_default=True,
    help="Encoder search: 0 codes the analysis transform's answer (fastest, under "
    "half the encoding time of 1); 1 refines it by one gradient step (about 6-7% "
    "fewer bits for the quality); 2 by three (about 8-9%, twice the time of 1). "
    "Decoding is the same.",
)


def quality_option(help_text: str, default: bool = True) -> dict:
    """-q's range and default, from the shipped models."""
    levels = quality_levels() or [1]
    chosen = default_quality() if default else None
    return dict(
        type=click.IntRange(levels[0], levels[-1]),
        default=chosen,
        show_default=default,
        help=help_text,
    )


@click.group()
@click.version_option(dqcodec.__version__, prog_name="dqcodec")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    envvar=THREADS_ENV,
    show_envvar=True,
    help="Threads for the networks [default: the cores this process may use that other "
    "processes are not busy on]. Files decode the same with any count.",
)
def main(threads):
    """dqcodec: a learned image codec built on Depthwise Quantization."""
    start_command(threads)  # before NumPy loads, which sizes BLAS's threads then


def configure_threads() -> None:
    use_threads(click.get_current_context().find_root().params.get("threads"))


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Output .dq file; - for stdout."
)
@click.option(
    "-d",
    "--outdir",
    type=click.Path(path_type=Path),
    help="Output folder for several inputs (created if missing).",
)
@click.option(
    "-q",
    "--quality",
    **quality_option(
        "Quality level of the shipped models: 1 gives the smallest files, 9 the best images."
    ),
)
@click.option(
    "--model", type=click.Path(path_type=Path), help="A model file (.safetensors), instead of -q."
)
@click.option(
    "--rate-point",
    type=int,
    help="With --model: the rate point of a variable-rate model "
    "(0 = lowest rate) [default: its highest].",
)
@click.option("-e", "--effort", **EFFORT_OPTION)
@click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")
@user_errors
def encode(inputs, output, outdir, quality, model, rate_point, effort, force):
    """Compress images to .dq files. An input of - reads stdin. Exit status: 0 when every file
    was written, 1 when one failed, 2 for a usage error."""
    from dqcodec.codec import load_codec
    from dqcodec.image_io import open_image

    codec = load_codec(
        None if model is not None else quality, model, model_rate_point(model, rate_point)
    )
    outputs = output_paths(inputs, output, outdir, ".dq")

    def work(src: Path, dst: Path) -> None:
        if dst != STDIO:
            check_output(src, dst, force)
        image = open_image(src, read_bytes(src) if src == STDIO else None)
        data = codec.encode(image, effort)
        if dst == STDIO:
            to_stdout(lambda out: out.write(data))
        else:
            write_bytes_atomic(dst, data)
        bpp = len(data) * 8 / (image.width * image.height)
        status(f"{src} -> {dst}: {image.width}x{image.height}, {len(data)} bytes, {bpp:.4f} bpp")

    run_batch(inputs, outputs, work)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Output image (format from extension); - for PNG on stdout.",
)
@click.option(
    "-d",
    "--outdir",
    type=click.Path(path_type=Path),
    help="Output folder (PNG) for several inputs (created if missing).",
)
@click.option(
    "--model", type=click.Path(path_type=Path), help="The model file the images were encoded with."
)
@click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")
@click.option(
    "--max-pixels",
    type=int,
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Refuse files that claim a larger image.",
)
@user_errors
def decode(inputs, output, outdir, model, force, max_pixels):
    """Decompress .dq files to images. An input of - reads stdin. Exit status: 0 when every
    file was written, 1 when one failed, 2 for a usage error."""
    from dqcodec.decoding import decoder_for_file
    from dqcodec.image_io import save_format

    outputs = output_paths(inputs, output, outdir, ".png")

    def work(src: Path, dst: Path) -> None:
        if dst != STDIO:
            check_output(src, dst, force)
        fmt = "PNG" if dst == STDIO else save_format(dst)
        data = read_bytes(src)
        image = decoder_for_file(data, model).decode(data, max_pixels=max_pixels)
        if dst == STDIO:
            to_stdout(lambda out: image.save(out, format=fmt))
        else:
            write_atomic(dst, lambda tmp: image.save(tmp, format=fmt))
        status(f"{src} -> {dst}: {image.width}x{image.height} {image.mode}")

    run_batch(inputs, outputs, work)


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@user_errors
def info(input):
    """Show the header of a .dq file."""
    data = read_bytes(input)
    dq = DQFile.from_bytes(data)
    pixels = dq.width * dq.height
    click.echo(f"file:       {input} ({len(data)} bytes)")
    click.echo(f"image:      {dq.width}x{dq.height} {dq.mode}")
    click.echo(
        f"format:     version {dq.version} ({'integer' if dq.version > 1 else 'float'} prior)"
    )
    click.echo(
        f"model:      {dq.model_id.hex()} "
        f"(quality {dq.quality or 'custom'}, rate point {dq.rate_point})"
    )
    click.echo(
        f"payload:    top {len(dq.top)} B, bottom {len(dq.bottom)} B, alpha {len(dq.alpha)} B"
    )
    click.echo(f"bpp:        {len(data) * 8 / pixels:.4f} (whole file, header included)")


@main.command(name="eval")
@click.option("--dataset", default="kodak", show_default=True, help="Named dataset (kodak).")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Evaluate this folder of images instead of downloading.",
)
@click.option(
    "-q",
    "--quality",
    **quality_option("One quality level [default: every shipped level].", default=False),
)
@click.option("--model", type=click.Path(path_type=Path), help="A model file (.safetensors).")
@click.option(
    "--rate-point",
    type=int,
    help="With --model: one rate point of a variable-rate model [default: every one].",
)
@click.option(
    "--compare",
    default="",
    help="Classic codecs to run on the same images: jpeg,webp,avif,heic,jxl.",
)
@click.option(
    "--published", is_flag=True, help="Add CompressAI's published Kodak curves to the plot."
)
@click.option(
    "--published-dir",
    type=click.Path(path_type=Path),
    help="Folder of CompressAI result JSON files.",
)
@click.option(
    "--plot", "plot_path", type=click.Path(path_type=Path), help="Write an RD plot (PNG)."
)
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), help="Write all figures as JSON."
)
@click.option("-e", "--effort", **EFFORT_OPTION)
@click.option("-v", "--verbose", is_flag=True, help="Per-image tables for every level.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bars on stderr (default: where stderr is a terminal).",
)
@user_errors
def eval_(
    dataset,
    data_dir,
    quality,
    model,
    rate_point,
    compare,
    published,
    published_dir,
    plot_path,
    json_path,
    effort,
    verbose,
    progress,
):
    """Rate-distortion of dqcodec (and other codecs) on a dataset, from real bitstreams."""
    from dqcodec.codec import load_codec
    from dqcodec.evaluation import classic_codecs as baselines
    from dqcodec.evaluation import evaluate as evaluation
    from dqcodec.evaluation import rd
    from dqcodec.evaluation.datasets import resolve_dataset
    from dqcodec.zoo import shipped_models

    paths = resolve_dataset(dataset, data_dir)
    progress = sys.stderr.isatty() if progress is None else progress
    if model is not None and rate_point is None:
        points = load_codec(path=model).model.config.rate_points
        codecs = [load_codec(path=model, rate_point=p) for p in range(points)]
    elif model is not None or quality is not None:
        codecs = [load_codec(quality, model, model_rate_point(model, rate_point))]
    else:
        codecs = [load_codec(q) for q in shipped_models()] or [load_codec()]
    ours = f"dqcodec-e{effort}" if effort != DEFAULT_EFFORT else "dqcodec"
    reports, curves = [], {ours: []}
    for codec in codecs:
        results = evaluation.evaluate(evaluation.DQCoder(codec, effort), paths, progress=progress)
        summary = evaluation.report(codec, data_dir.name if data_dir else dataset, results, effort)
        reports.append(summary)
        curves[ours].append(evaluation.curve_point(codec.setting, results))
        if verbose or len(codecs) == 1:
            click.echo(f"dqcodec {codec.setting} ({codec.model_id.hex()}):")
            click.echo(format_table(summary))
    names = [n.strip().lower() for n in compare.split(",") if n.strip()]
    usable, missing = baselines.available_codecs(names)
    for name, reason in missing.items():
        click.echo(f"note: skipping {name}: {reason}", err=True)
    for name in usable:
        curves[name] = baselines.evaluate_baseline(name, paths, progress=progress)
    comparison = evaluation.compare(curves)
    click.echo(format_curves(curves))
    if len(curves) > 1:
        click.echo(format_comparison(comparison, list(curves)))
    if plot_path:
        extra = (
            rd.load_published(
                published_dir or default_published_dir(),
                ["bmshj2018-hyperprior", "mbt2018", "bpg", "vtm"],
            )
            if published
            else None
        )
        pairs = evaluation.rd_pairs(curves)
        write_atomic(
            plot_path,
            lambda tmp: rd.plot_rd(
                pairs, tmp, f"RGB PSNR on {data_dir.name if data_dir else dataset}", published=extra
            ),
        )
    if json_path:
        payload = {"dqcodec": reports, "curves": curves, "comparison": comparison}
        write_bytes_atomic(json_path, json.dumps(payload, indent=1).encode())


def format_table(summary: dict) -> str:
    head = f"{'image':<16}{'bpp':>8}{'PSNR':>8}{'MS-SSIM':>9}{'enc s':>8}{'dec s':>8}{'H bpp':>8}"
    rows = [head, "-" * len(head)]

    def row(name, r):
        ms = f"{r['ms_ssim']:.4f}" if r["ms_ssim"] is not None else "-"
        return (
            f"{name:<16}{r['bpp']:>8.4f}{r['psnr']:>8.2f}{ms:>9}{r['encode_s']:>8.3f}"
            f"{r['decode_s']:>8.3f}{r['entropy_bpp']:>8.4f}"
        )

    rows += [row(r["name"], r) for r in summary["images"]]
    rows += ["-" * len(head), row("mean", summary["mean"])]
    return "\n".join(rows)


def default_published_dir() -> Path:
    """The project's copy of CompressAI's results, beside a source checkout."""
    candidate = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "compressai_kodak"
    if not candidate.is_dir():
        raise DQError(
            "no published curves found; pass --published-dir DIR (CompressAI's results/image/kodak)"
        )
    return candidate


def format_curves(curves: dict) -> str:
    lines = [
        f"{'codec':<10}{'setting':>9}{'bpp':>8}{'PSNR':>8}{'MS-SSIM':>9}{'enc s':>8}{'dec s':>8}"
    ]
    for name, points in curves.items():
        for p in points:
            ms = f"{p['ms_ssim']:.4f}" if p.get("ms_ssim") is not None else "-"
            lines.append(
                f"{name:<10}{str(p['setting']):>9}{p['bpp']:>8.4f}{p['psnr']:>8.2f}{ms:>9}"
                f"{p['encode_s']:>8.3f}{p['decode_s']:>8.3f}"
            )
    return "\n".join(lines)


def format_comparison(comparison: dict, names: list[str]) -> str:
    def cell(v, fmt):
        return format(v, fmt) if v is not None else "-"

    bpps = next(iter(comparison["psnr_at_bpp"].values())).keys()
    lines = ["", "PSNR (dB) at " + " / ".join(bpps) + " bpp:"]
    for name, row in comparison["psnr_at_bpp"].items():
        lines.append(f"  {name:<10}" + "".join(f"{cell(v, '.2f'):>8}" for v in row.values()))
    lines += [
        "",
        "BD-rate (%) of row vs column, 0.1-1.5 bpp (negative: row needs fewer bits):",
        " " * 12 + "".join(f"{n:>10}" for n in names),
    ]
    for b in names:
        cells = [
            cell(comparison["bd_rate_percent"].get(f"{b} vs {a}"), "+.1f") if a != b else ""
            for a in names
        ]
        lines.append(f"  {b:<10}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)


@main.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    required=True,
    help="Folder of training photos (a held-out part is used for validation).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Run folder (checkpoints)."
)
@click.option("--steps", type=int, default=20000, show_default=True)
@click.option(
    "--minutes",
    type=click.FloatRange(min=0, min_open=True),
    help=(
        "Train for about this long instead: --steps becomes what fits, timed on this device first."
    ),
)
@click.option(
    "--stop-after",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after this many minutes of wall time, mid-schedule, with a checkpoint that "
    "--resume continues (with --minutes, the resumed run keeps the schedule it sized).",
)
@click.option("--lr", type=float, default=3e-4, show_default=True)
@click.option(
    "--lambda",
    "lmbda",
    type=float,
    default=0.0067,
    show_default=True,
    help="Rate-distortion trade-off.",
)
@click.option(
    "--lambdas",
    help="A variable-rate model: one rate point per trade-off, e.g. "
    "0.0005,0.005,0.05 (overrides --lambda; with --init, widens a single-rate model).",
)
@click.option(
    "--groups",
    type=int,
    default=96,
    show_default=True,
    help="DQ groups of the bottom level (1 = plain VQ).",
)
@click.option("--codebook-size", type=int, default=64, show_default=True)
@click.option(
    "--width", type=int, default=128, show_default=True, help="Feature channels of the transforms."
)
@click.option(
    "--init",
    "init",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Start from this model's weights (e.g. a shipped one), with a fresh optimizer.",
)
@click.option(
    "--init-point",
    type=click.IntRange(min=0),
    help="Start a single-rate model from this "
    "rate point (0 = lowest) of a variable-rate --init model, e.g. models/dq-vr.safetensors.",
)
@click.option(
    "--rate-weight",
    type=float,
    help="Strength of rate-aware code assignment "
    "(bits weighed against squared latent distance) [default: 0.05, or the --init model's].",
)
@click.option(
    "--rate-weight-ramp",
    type=click.FloatRange(0, 1),
    help="Share of the steps over which the "
    "assignment strength grows from 0 to --rate-weight [default: 0.3, or 0.02 with --init].",
)
@click.option(
    "--stages",
    help="Crop schedule CROPxBATCH:FRACTION,... [default: 64x24:0.2,128x8:0.45,192x4:0.35].",
)
@click.option(
    "--warmup", type=int, default=300, show_default=True, help="Learning-rate warm-up steps."
)
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto: a CUDA GPU when PyTorch sees one (one per torchrun process), else the CPU.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default="auto",
    show_default=True,
    help="Arithmetic of the transforms while training; auto: bf16 where the hardware "
    "supports it. The prior always trains in fp32.",
)
@click.option(
    "--balance-points",
    is_flag=True,
    help="Variable-rate models: weight each rate point's loss by the inverse of its running "
    "RD cost, so that the low points are not outweighed by the high ones.",
)
@user_errors
def train(
    data,
    out,
    steps,
    minutes,
    stop_after,
    lr,
    lmbda,
    lambdas,
    groups,
    codebook_size,
    width,
    init,
    init_point,
    rate_weight,
    rate_weight_ramp,
    stages,
    warmup,
    resume,
    device,
    precision,
    balance_points,
):
    """Train a model (progressive crop sizes, resumable)."""
    import dataclasses

    from dqcodec.models.config import ModelConfig
    from dqcodec.training.trainer import (
        DEFAULT_STAGES,
        TrainOptions,
        parse_lambdas,
        parse_stages,
    )
    from dqcodec.training.trainer import (
        train as run_training,
    )

    base = ModelConfig()
    bottom = dataclasses.replace(
        base.bottom,
        groups=groups,
        codebook_size=codebook_size,
        slices=min(base.bottom.slices, groups),
    )
    points = parse_lambdas(lambdas) if lambdas else ()
    if init_point is not None and (init is None or points):
        raise click.UsageError(
            "--init-point needs --init and makes a single-rate model (no --lambdas)"
        )
    config = dataclasses.replace(
        base,
        lmbda=lmbda,
        bottom=bottom,
        width=width,
        prior_width=width,
        rate_weight=base.rate_weight if rate_weight is None else rate_weight,
        lambdas=points,
    )
    options = TrainOptions(
        data=data,
        out=out,
        steps=steps,
        lr=lr,
        config=config,
        init=init,
        init_lmbda=lmbda if init else None,
        init_lambdas=points if init and points else None,
        init_point=init_point,
        init_rate_weight=rate_weight if init else None,
        rate_weight_ramp=rate_weight_ramp,
        warmup=warmup,
        device=device,
        precision=precision,
        minutes=minutes,
        stop_after=stop_after,
        balance_points=balance_points,
        stages=parse_stages(stages) if stages else DEFAULT_STAGES,
    )
    kept = run_training(options, resume=resume, log=lambda m: click.echo(m, err=True))
    click.echo(
        f"best checkpoint: {kept}"
        if kept.name == "best.pt"
        else f"checkpoint (not validated yet): {kept}"
    )


@main.command(name="fit-prior")
@click.option(
    "--init",
    "init",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="The model whose prior is refitted; its transforms and codebooks stay as they are.",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    required=True,
    help="Folder of training photos (a fixed fifth, at most --val-count, is held out).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Run folder (checkpoints)."
)
@click.option(
    "--kernel",
    type=int,
    default=3,
    show_default=True,
    help="Kernel of the prior's convolution over the slices already decoded.",
)
@click.option(
    "--blocks", type=int, default=1, show_default=True, help="Residual 3x3 blocks in each pass."
)
@click.option(
    "--free-logits", is_flag=True, help="Predict a logit per code beside the Gaussian bump."
)
@click.option("--steps", type=int, default=2000, show_default=True)
@click.option("--lr", type=float, default=3e-4, show_default=True)
@click.option(
    "--window",
    type=int,
    default=24,
    show_default=True,
    help="Latent positions per side of a training window (x16 px); a multiple of 4.",
)
@click.option("--val-count", type=int, default=16, show_default=True)
@click.option(
    "--codes",
    "codes_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Keep the photos' codes in this file: a later fit of the same model on the "
    "same photos reads them instead of assigning them again.",
)
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt.")
@user_errors
def fit_prior(
    init, data, out, kernel, blocks, free_logits, steps, lr, window, val_count, codes_file, resume
):
    """Refit a model's prior to its own codes (fast: the transforms are frozen)."""
    from dqcodec.training.prior_fitting import PriorFitOptions
    from dqcodec.training.prior_fitting import fit_prior as run_fit

    options = PriorFitOptions(
        data=data,
        out=out,
        init=init,
        kernel=kernel,
        blocks=blocks,
        free_logits=free_logits,
        steps=steps,
        lr=lr,
        window=window,
        val_count=val_count,
        codes_file=codes_file,
    )
    best = run_fit(options, resume=resume, log=lambda m: click.echo(m, err=True))
    if best is not None:
        click.echo(f"best checkpoint: {best}")


@main.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    required=True,
    help="Folder of training photos (its held-out split validates).",
)
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option(
    "--run",
    type=click.Path(path_type=Path),
    help="Folder for checkpoints and logs [default: beside the output].",
)
@click.option(
    "--init",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Model to start from [default: the shipped variable-rate model].",
)
@click.option("--crop", type=click.IntRange(min=64), default=256, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=128, show_default=True)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("-f", "--force", is_flag=True)
@user_errors
def burst(data, minutes, output, run, init, crop, batch, device, force):
    """Train the shipped variable-rate model for a fixed time on a GPU (large batches, photos
    on the device, compiled transforms, balanced rate points, frozen prior) and write a model
    file ready to evaluate. Refit its prior afterwards with fit-prior."""
    from dqcodec.training.burst import BurstRecipe
    from dqcodec.training.burst import burst as run_burst

    check_output(data, output, force)
    run = run or output.with_suffix(".run")
    kept = run_burst(
        data,
        run,
        minutes,
        init=init,
        device=device,
        recipe=BurstRecipe(crop=crop, batch=batch),
        log=lambda m: click.echo(m, err=True),
    )
    export_checkpoint(kept, output, "fp16")
    click.echo(f"{kept} -> {output}")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("-f", "--force", is_flag=True)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8"]),
    default="fp16",
    show_default=True,
    help="int8: per-channel convolution weights, half the size of fp16.",
)
@user_errors
def export(checkpoint, output, force, precision):
    """Turn a training checkpoint into a shippable safetensors model."""
    check_output(checkpoint, output, force)
    export_checkpoint(checkpoint, output, precision)
    click.echo(f"{checkpoint} -> {output}")


def export_checkpoint(checkpoint: Path, output: Path, precision: str) -> None:
    """A training checkpoint's model, written to `output` as a model file (atomically)."""
    from dqcodec.training.trainer import model_from_checkpoint
    from dqcodec.zoo import save_model

    model = model_from_checkpoint(checkpoint)
    write_atomic(output, lambda tmp: save_model(model, tmp, precision))


@main.command()
@click.option(
    "--model",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="The model file (.safetensors).",
)
@click.option(
    "--photos",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="Calibrate on centre crops of photos from this folder's training split (the photos "
    "train and fit-prior train on) [default: on codes the model synthesizes from its prior].",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="With --photos: how many, chosen with a fixed seed.",
)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output JSON.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output.")
@user_errors
def calibrate(model, photos, count, output, force):
    """Measure the activation ranges the integer prior is derived from (JSON). A model file
    keeps them in its metadata, or beside it as NAME.calibration.json."""
    from dqcodec.entropy_models.calibration import (
        calibrate_photos,
        calibrate_synthesized,
        training_photos,
    )
    from dqcodec.zoo import read_model_file

    check_output(model, output, force)
    weights = read_model_file(model)
    if photos is None:
        result = calibrate_synthesized(weights)
    else:
        result = calibrate_photos(weights, training_photos(photos, count))
    write_atomic(
        output,
        lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n"),
    )
    click.echo(f"{model} -> {output}: {result['source']}")
