"""Scale-out of the CLI: `diffusekit distill` under torchrun (two CPU ranks train each stage, rank 0 writes), and
`diffusekit quantize`, which leaves all work to rank 0."""

import os
import socket
import subprocess
import sys

from diffusekit.cli import load_denoiser, main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_progressive_distillation_on_two_ranks(tmp_path):
    teacher = tmp_path / "teacher"
    assert main(["train", "--data", "moons", "--num-examples", "256", "--steps", "20", "--batch-size", "32",
                 "--out", str(teacher), "--no-progress"]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    out = tmp_path / "student"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "diffusekit.cli", "distill",
           "--teacher", str(teacher), "--method", "progressive", "--out", str(out), "--teacher-steps", "8",
           "--train-steps", "6", "--batch-size", "16", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("distilled") == 1  # only rank 0 reports
    assert sorted(os.listdir(out)) == ["checkpoint.json", "checkpoint.safetensors", "distill.json", "stages"]
    assert sorted(os.listdir(out / "stages")) == ["round1", "round2"]
    student = load_denoiser(str(out))
    assert student.native_sampling["steps"] == 2


def test_quantize_leaves_the_work_to_rank_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    out = tmp_path / "q"
    assert main(["quantize", "--model", "zoo:digits_unet", "--method", "minmax", "--wbits", "8", "--abits", "8",
                 "--out", str(out)]) == 0
    assert "rank 0 quantizes" in capsys.readouterr().err
    assert not out.exists()
