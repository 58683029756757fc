"""Distributed helpers: single-process no-ops, and a real 2-process gloo run via torchrun."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from diffusekit.training import distributed as D

SCRIPT = Path(__file__).with_name("_ddp_script.py")


def test_helpers_are_noops_without_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert D.init_distributed() is False
    assert (D.world_size(), D.rank(), D.local_rank()) == (1, 0, 0)
    assert D.is_main_process() and not D.is_distributed()
    D.barrier()
    D.cleanup()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert D.init_distributed() is False


def test_bad_environment_is_reported(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' must be an integer"):
        D.init_distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="RANK/LOCAL_RANK"):
        D.init_distributed()


def test_trainer_warns_when_launched_without_process_group(monkeypatch):
    import torch

    from diffusekit.training.trainer import TrainConfig, Trainer

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.warns(RuntimeWarning, match="train independently"):
        Trainer(torch.nn.Linear(2, 1), lambda m, b, g: m(b[0]).squeeze(1), (torch.zeros(4, 2),),
                TrainConfig(steps=1, batch_size=2, progress=False))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_gloo(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # don't depend on the hostname resolving to a usable NIC
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(SCRIPT), str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    assert result["local_batch_size"] == 8  # global batch 16 split over 2 ranks
    assert result["init_differs"]  # ranks built different weights ...
    assert result["identical"] and result["ema_identical"]  # ... and DDP kept them identical
    assert result["resume_exact"]
    losses = result["losses"]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) < sum(losses[:3])
    assert sorted(os.listdir(tmp_path / "a_rank0")) == ["checkpoint.json", "checkpoint.safetensors", "log.jsonl"]
    assert not (tmp_path / "a_rank1").exists()  # rank 1 wrote nothing
