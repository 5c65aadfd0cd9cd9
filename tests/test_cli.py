import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import photo
from PIL import Image

from dqcodec.cli import main
from dqcodec.evaluation.metrics import psnr


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


# a model small enough to train in a test, on one crop size
TINY_TRAINING = ["--width", 8, "--groups", 4, "--codebook-size", 4, "--stages", "64x2:1"]


def run_process(*args, env=None):
    """The installed console script, as a user runs it."""
    cmd = [sys.executable, "-m", "dqcodec.cli", *map(str, args)]
    return subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120
    )


def assert_clean_failure(result, *missing_outputs):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    for path in missing_outputs:
        assert not path.exists()
        assert not list(path.parent.glob(f".{path.name}.*"))  # no temporary leftovers


NO_TORCH = """
import sys
from PIL import Image
import dqcodec
from dqcodec.cli import main
path, png = sys.argv[1], sys.argv[2]
try:
    main(["decode", path, "-o", png])
except SystemExit as stop:
    assert not stop.code, stop.code
assert Image.open(path).load() is not None and dqcodec.decode(path).size == Image.open(png).size
assert "torch" not in sys.modules, "decoding imported torch"
"""


def test_decoding_imports_no_torch(tmp_path):
    """The command line, the Pillow plugin and the API decode with NumPy alone."""
    from dqcodec.codec import load_codec

    (tmp_path / "x.dq").write_bytes(load_codec(1).encode(photo(90, 60), effort=0))
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(tmp_path / "x.dq"), str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_encode_decode_roundtrip(tmp_path, model_file):
    src = tmp_path / "in.png"
    photo(100, 70).save(src)
    assert run("encode", src, "-o", tmp_path / "a.dq", "--model", model_file).exit_code == 0
    assert (
        run("decode", tmp_path / "a.dq", "-o", tmp_path / "a.png", "--model", model_file).exit_code
        == 0
    )
    out = Image.open(tmp_path / "a.png")
    assert out.size == (100, 70)
    info = run("info", tmp_path / "a.dq")
    assert "100x70 RGB" in info.output
    size = (tmp_path / "a.dq").stat().st_size
    assert f"{size * 8 / 7000:.4f}" in info.output


def test_eval_shows_progress_bars_on_a_terminal_or_where_asked(image_dir, model_file):
    args = ("eval", "--data-dir", image_dir, "--model", model_file)
    piped = run_process(*args)
    assert piped.returncode == 0, piped.stderr
    assert "img/s" not in piped.stderr and "%|" not in piped.stderr
    asked = run_process(*args, "--progress")
    assert asked.returncode == 0 and "%|" in asked.stderr


def test_eval_matches_files_written_by_encode_and_decode(tmp_path, image_dir, model_file):
    report_path = tmp_path / "r.json"
    r = run(
        "eval",
        "--data-dir",
        image_dir,
        "--model",
        model_file,
        "--json",
        report_path,
        "--no-progress",
    )
    assert r.exit_code == 0, r.output
    report = json.loads(report_path.read_text())["dqcodec"][0]
    assert len(report["images"]) == 2
    for entry in report["images"]:
        src = image_dir / entry["name"]
        dq, png = tmp_path / (src.stem + ".dq"), tmp_path / (src.stem + ".png")
        assert run("encode", src, "-o", dq, "--model", model_file).exit_code == 0
        assert run("decode", dq, "-o", png, "--model", model_file).exit_code == 0
        original, decoded = Image.open(src), Image.open(png)
        bpp = dq.stat().st_size * 8 / (original.width * original.height)
        assert entry["bytes"] == dq.stat().st_size
        assert abs(entry["bpp"] - bpp) < 1e-9
        assert abs(entry["psnr"] - psnr(original, decoded)) < 1e-9
    assert abs(report["mean"]["bpp"] - np.mean([e["bpp"] for e in report["images"]])) < 1e-12
    assert "mean" in r.output


def test_decoding_ignores_thread_count(tmp_path):
    """Full-width convolutions could round differently with 1 and 2 threads; they do not."""
    import dataclasses

    import torch

    from dqcodec.models.dq import DQModel
    from dqcodec.testing import TINY
    from dqcodec.zoo import save_model

    torch.manual_seed(0)
    model_file = tmp_path / "wide.safetensors"
    save_model(DQModel(dataclasses.replace(TINY, width=128, prior_width=128)), model_file)
    src = tmp_path / "in.png"
    photo(256, 192, 7).save(src)
    torch.set_num_threads(2)
    assert run("encode", src, "-o", tmp_path / "a.dq", "--model", model_file).exit_code == 0
    outputs = []
    for threads in (1, 2):
        out = tmp_path / f"t{threads}.png"
        args = ("--threads", threads, "decode", tmp_path / "a.dq", "-o", out)
        res = run_process(*args, "--model", model_file)
        assert res.returncode == 0, res.stderr
        outputs.append(np.asarray(Image.open(out)))
    assert np.array_equal(outputs[0], outputs[1])


def test_missing_input(tmp_path, model_file):
    res = run_process(
        "encode", tmp_path / "nope.png", "-o", tmp_path / "x.dq", "--model", model_file
    )
    assert_clean_failure(res, tmp_path / "x.dq")


@pytest.mark.parametrize("content", [b"", b"this is not an image"])
def test_not_an_image(tmp_path, model_file, content):
    src = tmp_path / "fake.png"
    src.write_bytes(content)
    res = run_process("encode", src, "-o", tmp_path / "x.dq", "--model", model_file)
    assert_clean_failure(res, tmp_path / "x.dq")


def test_corrupt_dq(tmp_path, model_file):
    src = tmp_path / "in.png"
    photo(64, 64).save(src)
    assert run("encode", src, "-o", tmp_path / "a.dq", "--model", model_file).exit_code == 0
    data = bytearray((tmp_path / "a.dq").read_bytes())
    data[-3] ^= 0x10
    (tmp_path / "bad.dq").write_bytes(bytes(data))
    res = run_process(
        "decode", tmp_path / "bad.dq", "-o", tmp_path / "out.png", "--model", model_file
    )
    assert_clean_failure(res, tmp_path / "out.png")
    assert "CRC32" in res.stderr


def test_wrong_model(tmp_path, model_file, other_model_file):
    src = tmp_path / "in.png"
    photo(64, 64).save(src)
    assert run("encode", src, "-o", tmp_path / "a.dq", "--model", model_file).exit_code == 0
    res = run_process(
        "decode", tmp_path / "a.dq", "-o", tmp_path / "out.png", "--model", other_model_file
    )
    assert_clean_failure(res, tmp_path / "out.png")
    assert "model" in res.stderr


def test_pickle_model_is_refused(tmp_path):
    import torch

    evil = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1)}, evil)
    src = tmp_path / "in.png"
    photo(32, 32).save(src)
    res = run_process("encode", src, "-o", tmp_path / "a.dq", "--model", evil)
    assert_clean_failure(res, tmp_path / "a.dq")


def test_existing_output_is_kept_without_force(tmp_path, model_file):
    src = tmp_path / "in.png"
    photo(32, 32).save(src)
    target = tmp_path / "a.dq"
    target.write_bytes(b"precious")
    r = run("encode", src, "-o", target, "--model", model_file)
    assert r.exit_code != 0 and "--force" in r.output
    assert target.read_bytes() == b"precious"
    assert run("encode", src, "-o", target, "--model", model_file, "--force").exit_code == 0
    assert target.read_bytes()[:4] == b"\x89DQC"


def test_output_equal_to_input_is_refused(tmp_path, model_file):
    src = tmp_path / "in.png"
    photo(32, 32).save(src)
    before = src.read_bytes()
    r = run("encode", src, "-o", src, "--model", model_file, "--force")
    assert r.exit_code != 0 and "input" in r.output
    assert src.read_bytes() == before


def test_train_and_resume(tmp_path, training_photos):
    data = training_photos
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        data,
        "--out",
        out,
        "--width",
        8,
        "--groups",
        4,
        "--codebook-size",
        4,
    ]
    r = run(*args, "--steps", 2)
    assert r.exit_code == 0, r.output
    assert (out / "checkpoint.pt").exists()
    r = run(*args, "--steps", 3, "--resume")
    assert r.exit_code == 0 and "resumed from" in r.output and "at step 2" in r.output
    exported = tmp_path / "m.safetensors"
    assert run("export", out / "best.pt", "-o", exported).exit_code == 0
    mask = os.umask(0)
    os.umask(mask)
    assert exported.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    src = tmp_path / "in.png"
    photo(64, 64).save(src)
    assert run("encode", src, "-o", tmp_path / "a.dq", "--model", exported).exit_code == 0
    r = run(
        "train",
        "--data",
        data,
        "--out",
        tmp_path / "run2",
        "--init",
        exported,
        "--steps",
        4,
        "--lambda",
        0.01,
        "--rate-weight",
        0.2,
        "--rate-weight-ramp",
        0.5,
        "--stages",
        "64x2:1",
    )
    assert r.exit_code == 0 and "initialised from" in r.output
    assert "lambda 0.01" in r.output and "assignment strength 0.2" in r.output
    assert "grows to 0.2 over the first 2 of 4 steps" in r.output


@pytest.mark.parametrize("stages", ["128x8", "128:0.5", "100x8:1", "64x0:1", "64x4:0"])
def test_train_refuses_a_bad_crop_schedule(tmp_path, training_photos, stages):
    r = run_process(
        "train", "--data", training_photos, "--out", tmp_path / "run", "--stages", stages
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "stage" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_train_for_a_wall_time_budget(tmp_path, training_photos):
    import torch

    out = tmp_path / "run"
    r = run(
        "train",
        "--data",
        training_photos,
        "--out",
        out,
        *TINY_TRAINING,
        "--minutes",
        0.03,
    )
    assert r.exit_code == 0, r.output
    steps = int(re.search(r"0.03 minutes: (\d+) steps", r.output).group(1))
    assert steps >= 1
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == steps


def test_a_run_split_by_stop_after_resumes_the_same_schedule(
    tmp_path, training_photos, monkeypatch
):
    import torch

    from dqcodec.training import trainer as training

    monkeypatch.setattr(training, "steps_within", lambda *a: 40)
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        training_photos,
        "--out",
        out,
        *TINY_TRAINING,
        "--minutes",
        5,
    ]
    r = run(*args, "--stop-after", 1e-6)
    assert r.exit_code == 0, r.output
    assert "stopped after" in r.output and "at step 10 of 40" in r.output
    assert "best checkpoint" not in r.output and "not validated yet" in r.output
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (state["step"], state["schedule_steps"]) == (10, 40)

    monkeypatch.setattr(training, "steps_within", lambda *a: 7)  # a re-timing would end at 17
    r = run(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert "continuing the schedule of 40 steps" in r.output
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 40


def test_steps_within_a_budget_follow_the_stage_times(monkeypatch):
    from dqcodec.training import trainer as training

    monkeypatch.setattr(training, "seconds_per_step", lambda model, stage, *a: stage.crop / 512)
    opts = training.TrainOptions(
        data=Path("."),
        out=Path("."),
        stages=(training.Stage(64, 2, 1.0), training.Stage(128, 2, 3.0)),
    )
    # a step takes 0.125 s for a quarter of the run and 0.25 s for the rest: 0.21875 s on average
    assert abs(training.steps_within(70, None, opts, None, False) - 0.95 * 70 / 0.21875) < 1


def test_train_on_cuda_without_a_gpu_is_a_clear_error(tmp_path, training_photos):
    r = run_process(
        "train", "--data", training_photos, "--out", tmp_path / "run", "--device", "cuda",
        env={"CUDA_VISIBLE_DEVICES": ""},  # no GPU, also on a machine that has one
    )  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "no CUDA device" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_batch_carries_on_past_a_bad_file(tmp_path, model_file):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    photo(40, 40).save(good)
    bad.write_text("not an image")
    out = tmp_path / "out"
    out.mkdir()
    res = run_process("encode", bad, good, "-d", out, "--model", model_file)
    assert res.returncode != 0
    assert "bad.png" in res.stderr and "1 of 2 files failed" in res.stderr
    assert "Traceback" not in res.stderr
    assert (out / "good.dq").exists() and not (out / "bad.dq").exists()


def test_killed_encode_leaves_no_output(tmp_path, model_file):
    """SIGKILL at the worst moment, the whole file written but not yet renamed into place."""
    import signal

    src = tmp_path / "in.png"
    photo(64, 64).save(src)
    target = tmp_path / "a.dq"
    code = (
        "import os, signal, sys\n"
        "import dqcodec.fileio as f\n"
        "f.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from dqcodec.cli import main\n"
        "sys.exit(main())"
    )
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "encode",
            str(src),
            "-o",
            str(target),
            "--model",
            str(model_file),
        ],
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == -signal.SIGKILL
    assert not target.exists()


def test_failing_write_leaves_no_output(tmp_path, model_file, monkeypatch):
    from dqcodec import fileio

    src = tmp_path / "in.png"
    photo(32, 32).save(src)

    def broken(tmp, data=b""):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.Path, "write_bytes", lambda self, data: broken(self))
    r = run("encode", src, "-o", tmp_path / "a.dq", "--model", model_file)
    assert r.exit_code != 0
    assert not (tmp_path / "a.dq").exists() and not list(tmp_path.glob(".a.dq.*"))


def test_thread_count_gives_the_same_file(tmp_path, model_file):
    src = tmp_path / "in.png"
    photo(96, 80).save(src)
    for threads in (1, 2):
        assert (
            run(
                "--threads",
                threads,
                "encode",
                src,
                "-o",
                tmp_path / f"{threads}.dq",
                "--model",
                model_file,
            ).exit_code
            == 0
        )
    assert (tmp_path / "1.dq").read_bytes() == (tmp_path / "2.dq").read_bytes()
    res = run_process(
        "encode", src, "-o", tmp_path / "x.dq", "--model", model_file, env={"DQCODEC_THREADS": "0"}
    )
    assert res.returncode == 2 and "DQCODEC_THREADS" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x.dq").exists()


def test_quality_help_shows_range_and_default():
    out = run("encode", "--help").output
    assert "1<=x<=9" in out and "default: 5" in out
    assert run("encode", "x.png", "-q", "75").exit_code == 2


def test_pipes_give_the_same_file_and_pixels(tmp_path, model_file):
    src = tmp_path / "in.png"
    photo(96, 80).save(src)
    assert run("encode", src, "-o", tmp_path / "a.dq", "--model", model_file).exit_code == 0
    assert (
        run("decode", tmp_path / "a.dq", "-o", tmp_path / "a.png", "--model", model_file).exit_code
        == 0
    )
    cmd = [sys.executable, "-m", "dqcodec.cli"]
    encoded = subprocess.run(
        [*cmd, "encode", "-", "-o", "-", "--model", str(model_file)],
        input=src.read_bytes(),
        capture_output=True,
        timeout=120,
    )
    assert encoded.returncode == 0 and encoded.stdout == (tmp_path / "a.dq").read_bytes()
    assert b"bpp" in encoded.stderr  # status goes to stderr, never into the data
    decoded = subprocess.run(
        [*cmd, "decode", "-", "-o", "-", "--model", str(model_file)],
        input=encoded.stdout,
        capture_output=True,
        timeout=120,
    )
    assert decoded.returncode == 0
    piped = np.asarray(Image.open(io.BytesIO(decoded.stdout)))
    assert np.array_equal(piped, np.asarray(Image.open(tmp_path / "a.png")))


def test_stdin_needs_an_output_and_batches_create_their_folder(tmp_path, model_file):
    res = run_process("encode", "-", "--model", model_file)
    assert_clean_failure(res)
    assert "-o" in res.stderr
    src = tmp_path / "in.png"
    photo(64, 64).save(src)
    assert run("encode", src, "-d", tmp_path / "new" / "out", "--model", model_file).exit_code == 0
    assert (tmp_path / "new" / "out" / "in.dq").is_file()
    # the second input would overwrite the first's output: that file fails, exit status 1
    assert run("encode", src, src, "-d", tmp_path / "two", "--model", model_file).exit_code == 1


def test_large_files_decode_with_torch_small_ones_with_numpy(monkeypatch):
    """decoding.decoder_for_file: NumPy where start-up is most of the time, torch's faster
    synthesis for large images and in programs that have loaded torch already."""
    import dqcodec.decoding as decoding
    from dqcodec.codec import Codec, load_codec
    from dqcodec.numpy_decoder.decoder import Decoder

    data = load_codec(1).encode(photo(200, 130), effort=0)
    assert isinstance(decoding.decoder_for_file(data), Codec)  # this process has torch
    monkeypatch.delitem(sys.modules, "torch")
    numpy_made = decoding.decoder_for_file(data)
    assert isinstance(numpy_made, Decoder)
    monkeypatch.setattr(decoding, "NUMPY_MAX_PIXELS", 256 * 128)
    assert isinstance(decoding.decoder_for_file(data), Codec)
    monkeypatch.undo()
    pixels = [np.asarray(d.decode(data, 1 << 26), dtype=int) for d in (numpy_made, load_codec(1))]
    assert np.abs(pixels[0] - pixels[1]).max() <= 1
