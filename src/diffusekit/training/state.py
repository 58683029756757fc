"""A trainer's full state in a checkpoint: what :meth:`Trainer.save` writes and :meth:`Trainer.resume` reads.

Besides the model, EMA and optimizer (see :mod:`.checkpoint` for the file format), the state holds every
random generator the loop touches (the data generator, each rank's loss generator and torch's global
RNGs), the data-order permutation and the position in it, and the loss/gradient-norm history, so a
resumed run continues bit-exactly.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..io import sweep_temp_files
from . import distributed as dist_utils
from .checkpoint import (
    META_FILE,
    TENSORS_FILE,
    CheckpointError,
    _sub_state,
    check_model_config,
    load_checkpoint,
    load_state_strict,
    optimizer_state_from_tensors,
    save_checkpoint,
)
from .config import TRAJECTORY_FIELDS

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["derive_seed", "restore_trainer", "save_trainer", "sweep_orphans"]

LOG_FILE = "log.jsonl"
# files of a run folder that are written atomically and can leave a temporary file behind when killed
RUN_FILES = (TENSORS_FILE, META_FILE, LOG_FILE, "config.yaml", "loss.png")


def derive_seed(seed: int, stream: str, index: int = 0, extra: int = 0) -> int:
    """Independent 63-bit seed for a named random stream (data / loss, per rank)."""
    digest = hashlib.sha256(f"diffusekit:{seed}:{stream}:{index}:{extra}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sweep_orphans(out_dir: str | Path) -> list[Path]:
    """Remove the temporary files a killed run (SIGKILL, power loss) left in its folder."""
    return sweep_temp_files(out_dir, RUN_FILES)


def _rng_states(trainer: Trainer) -> dict[str, torch.Tensor]:
    """All generator states, per rank (gathered to every rank under DDP)."""
    local = {"loss": trainer.loss_generator.get_state(), "torch_cpu": torch.get_rng_state()}
    if trainer.device.type == "cuda":
        local["torch_cuda"] = torch.cuda.get_rng_state(trainer.device)
    states = {"data": trainer.data_generator.get_state()}
    for name, state in local.items():
        for r, s in enumerate(dist_utils.all_gather_tensor(state)):
            states[f"{name}.rank{r}"] = s
    return states


def save_trainer(trainer: Trainer, target: Path) -> Path | None:
    """Write ``trainer``'s state to ``target`` (rank 0 writes; every rank must call it under DDP)."""
    states = _rng_states(trainer)
    written = None
    if trainer.is_main:
        extra_tensors = {
            "history.loss": torch.tensor(trainer._loss_history, dtype=torch.float64),
            "history.grad_norm": torch.tensor(trainer._grad_norm_history, dtype=torch.float64),
        }
        if trainer._perm is not None:
            extra_tensors["data.permutation"] = trainer._perm
        written = save_checkpoint(
            target,
            model=trainer.model,
            ema_model=trainer.ema_model,
            optimizer=trainer.optimizer,
            step=trainer.step,
            generators=states,
            config=trainer.config.to_dict(),
            extra_config=trainer.extra_config,
            extra_meta={
                "world_size": trainer.world_size,
                "data": {"num_examples": trainer.num_examples, "cursor": trainer._cursor, "epoch": trainer._epoch},
                "stopped_early": trainer.stopped_early,
                "train_seconds": trainer._seconds(),
                "evals": trainer._evals,
                "grad_scaler": trainer.grad_scaler.state_dict() if trainer.grad_scaler is not None else None,
            },
            extra_tensors=extra_tensors,
        )
    trainer._last_saved_step = trainer.step
    dist_utils.barrier()
    return written


def restore_trainer(trainer: Trainer, path_dir: str | Path) -> dict:
    """Load a checkpoint into ``trainer``; see :meth:`Trainer.resume`."""
    tensors, meta = load_checkpoint(path_dir)
    where = str(Path(path_dir) / TENSORS_FILE)
    check_model_config(meta, trainer.model, where)
    data_meta = meta.get("data") or {}
    if data_meta.get("num_examples") != trainer.num_examples:
        raise CheckpointError(
            f"{where}: checkpoint was trained on {data_meta.get('num_examples')} examples "
            f"but data has {trainer.num_examples}"
        )
    desc = meta.get("optimizer")
    if desc is None or desc.get("class") != type(trainer.optimizer).__name__:
        got = None if desc is None else desc.get("class")
        raise CheckpointError(f"{where}: optimizer state is {got!r}, expected {type(trainer.optimizer).__name__}")

    load_state_strict(trainer.model, _sub_state(tensors, "model."), where)
    if trainer.ema_model is not None:
        if meta.get("has_ema"):
            load_state_strict(trainer.ema_model, _sub_state(tensors, "ema."), where)
        else:
            warnings.warn(f"{where} has no EMA weights; EMA restarts from the loaded weights",
                          RuntimeWarning, stacklevel=3)
            trainer.ema_model.load_state_dict(trainer.model.state_dict())
    try:
        trainer.optimizer.load_state_dict(optimizer_state_from_tensors(tensors, desc, trainer.optimizer))
    except (KeyError, ValueError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{where}: optimizer state does not fit the model: {msg}") from None

    saved_cfg = meta.get("train_config") or {}
    now_cfg = trainer.config.to_dict()
    per_example = now_cfg.get("loss_noise") == "per_example" and saved_cfg.get("loss_noise") == "per_example"
    # with per-example noise the micro-batching is not part of the trajectory (only float reduction order)
    free = ("grad_accum_steps",) if per_example else ()
    changed = [k for k in TRAJECTORY_FIELDS if k in saved_cfg and k not in free and saved_cfg[k] != now_cfg[k]]
    saved_ws = meta.get("world_size", 1)
    if changed and trainer.is_main:
        warnings.warn(f"resuming with changed {changed}; the continuation is not bit-exact",
                      RuntimeWarning, stacklevel=3)
    saved_extra = meta.get("extra_config")
    if trainer.extra_config is None:
        trainer.extra_config = saved_extra  # keep it in the checkpoints this run writes
    elif saved_extra is not None and json.loads(json.dumps(trainer.extra_config)) != saved_extra and trainer.is_main:
        warnings.warn("extra_config differs from the checkpoint's; the new one is recorded from now on",
                      RuntimeWarning, stacklevel=3)

    trainer.step = int(meta["step"])
    trainer._perm = tensors.get("data.permutation")
    trainer._cursor = int(data_meta.get("cursor", 0))
    trainer._epoch = int(data_meta.get("epoch", 0))
    if "rng.data" not in tensors:
        raise CheckpointError(f"{where}: data generator state 'rng.data' is missing")
    trainer.data_generator.set_state(tensors["rng.data"])
    per_rank = f"rank{trainer.rank}"
    if saved_ws == trainer.world_size and f"rng.loss.{per_rank}" in tensors:
        trainer.loss_generator.set_state(tensors[f"rng.loss.{per_rank}"])
        if f"rng.torch_cpu.{per_rank}" in tensors:
            torch.set_rng_state(tensors[f"rng.torch_cpu.{per_rank}"])
        if trainer.device.type == "cuda" and f"rng.torch_cuda.{per_rank}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng.torch_cuda.{per_rank}"], trainer.device)
    else:
        trainer.loss_generator.manual_seed(derive_seed(trainer.config.seed, "loss", trainer.rank, trainer.step))
        if trainer.is_main and not per_example:  # per-example noise is defined by the global batch: nothing lost
            warnings.warn(
                f"checkpoint was written with world size {saved_ws}, now {trainer.world_size}: "
                "loss generators are re-seeded and the continuation is not bit-exact",
                RuntimeWarning, stacklevel=3,
            )
    if trainer.grad_scaler is not None and meta.get("grad_scaler"):
        trainer.grad_scaler.load_state_dict(meta["grad_scaler"])
    trainer._loss_history = tensors.get("history.loss", torch.zeros(0)).tolist()
    trainer._grad_norm_history = tensors.get("history.grad_norm", torch.zeros(0)).tolist()
    trainer._evals = list(meta.get("evals") or [])
    trainer._train_seconds = float(meta.get("train_seconds", 0.0))
    trainer.stopped_early = False
    trainer._last_saved_step = trainer.step
    return meta
