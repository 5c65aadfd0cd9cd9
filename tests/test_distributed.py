import subprocess
import sys


def test_two_process_training_with_gloo(tmp_path, training_photos):
    data = training_photos
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "dqcodec.cli",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        "3",
        "--width",
        "8",
        "--groups",
        "4",
        "--codebook-size",
        "4",
    ]
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": __import__("os").environ["PATH"]},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "distributed data parallel: 2 processes (gloo)" in res.stderr
    assert (out / "checkpoint.pt").exists()
