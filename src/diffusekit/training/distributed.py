"""Minimal helpers for multi-process (DistributedDataParallel) training.

Launch with ``torchrun --nproc_per_node=N script.py``; torchrun sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for each process.
The script calls :func:`init_distributed` once before building the
:class:`~diffusekit.training.trainer.Trainer`; the trainer notices the initialised
process group and switches to DDP. Without torchrun (``WORLD_SIZE`` unset or 1) every
helper is a cheap no-op, so the same script runs single-process unchanged.

See ``docs/distributed.md`` for the tested command lines and what other launchers do.
"""

from __future__ import annotations

import gc
import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_tensor",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "launched_distributed",
    "local_rank",
    "rank",
    "world_size",
]


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def launched_distributed() -> bool:
    """True when a launcher (torchrun) asked for more than one process (``WORLD_SIZE>1``)."""
    ws = _env_int("WORLD_SIZE")
    return ws is not None and ws > 1


def init_distributed(backend: str | None = None, *, timeout_s: float = 600.0) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    Returns True when a process group is (now) initialised, False for a single-process
    run (``WORLD_SIZE`` unset or 1), in which case nothing happens. ``backend`` defaults
    to ``nccl`` when CUDA is available (and then selects GPU ``LOCAL_RANK``) and to
    ``gloo`` otherwise. Calling it again after success is a no-op.
    """
    if not launched_distributed():
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE>1 but this torch build has no torch.distributed support")
    if dist.is_initialized():
        return True
    ws, rk, lrk = _env_int("WORLD_SIZE"), _env_int("RANK"), _env_int("LOCAL_RANK")
    if rk is None or lrk is None:
        raise ValueError("WORLD_SIZE is set but RANK/LOCAL_RANK are not; launch with torchrun")
    if not 0 <= rk < ws:
        raise ValueError(f"RANK={rk} is outside [0, WORLD_SIZE={ws})")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(lrk)
    dist.init_process_group(
        backend=backend, init_method="env://", rank=rk, world_size=ws,
        timeout=timedelta(seconds=timeout_s),
    )
    return True


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    """Rank on this node from ``LOCAL_RANK`` (0 when unset)."""
    return _env_int("LOCAL_RANK") or 0


def is_main_process() -> bool:
    """True on rank 0 -- the only process that should write files or show progress."""
    return rank() == 0


def barrier() -> None:
    """Wait for all ranks (no-op when not distributed)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def cleanup() -> None:
    """Destroy the process group if one is initialised (no-op otherwise).

    Every DistributedDataParallel wrapper must be gone first: one that outlives its group is destroyed at
    interpreter exit against a dead gloo transport, which aborts the process ("terminate called without an active
    exception"). Callers drop their trainers before calling this; the garbage collection here frees wrappers
    that only reference cycles still hold.
    """
    if is_distributed():
        gc.collect()
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks and return the result on ``t``'s device (``t`` itself if 1 rank)."""
    if not is_distributed():
        return t
    buf = t.detach().to(_comm_device()).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def all_gather_tensor(t: torch.Tensor) -> list[torch.Tensor]:
    """Gather equally shaped tensors from all ranks; returns ``world_size`` CPU tensors."""
    if not is_distributed():
        return [t.detach().cpu()]
    buf = t.detach().to(_comm_device()).contiguous()
    out = [torch.empty_like(buf) for _ in range(world_size())]
    dist.all_gather(out, buf)
    return [o.cpu() for o in out]
