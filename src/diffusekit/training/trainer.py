"""A small, generic trainer with exact resume, safe checkpoints and optional DDP.

The trainer knows nothing about diffusion. It is given a model, a *per-example* loss
function and an in-memory dataset (a tuple of tensors sharing their first dimension),
and runs AdamW with linear LR warmup, gradient-norm clipping and an EMA copy of the
model.

Exact resume. Every source of randomness the training loop touches is owned and saved
by the trainer, so ``train N steps`` and ``train k steps, checkpoint, new process,
resume, train to N`` produce bit-identical loss curves and weights (on the same
hardware / torch build with deterministic kernels):

* the *data generator* (CPU) draws one permutation per epoch; the current permutation
  and the position in it are saved;
* the *loss generator* (a CPU generator) is handed to ``loss_fn`` for its noise /
  timestep draws; each DDP rank has its own, seeded from ``(seed, rank)``. It lives on
  the CPU on purpose: draws are then identical on every device (a CPU and a GPU run see
  the same noise), and ``loss_fn`` simply moves them, ``torch.randn(shape,
  generator=g).to(x.device)``;
* the process-global torch RNG (used e.g. by dropout) is saved and restored too;
  ``eval_fn`` runs inside ``torch.random.fork_rng`` so evaluation never perturbs
  training.

Batching. Each epoch is a fresh random permutation of the dataset; it is cut into
``len(data) // batch_size`` global batches and the remaining ``len(data) % batch_size``
examples are dropped *for that epoch only* (they are different examples every epoch).
``batch_size`` is the GLOBAL batch size: under DDP it must be divisible by the world
size and rank ``r`` gets the ``r``-th contiguous slice of every global batch, so the
optimisation trajectory does not depend on how many processes share the work (up to
floating-point reduction order and the per-rank loss noise).

LR schedule: for optimizer step ``s`` (1-based) ``lr_s = lr * min(1, s / warmup_steps)``
(constant ``lr`` when ``warmup_steps == 0``); the first step therefore already moves.

EMA: ``ema = decay * ema + (1 - decay) * param`` after every optimizer step, starting
from a copy of the initial weights, with no bias correction or decay warmup (so it is
easy to reason about and to test); buffers are copied.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import distributed as dist_utils
from .checkpoint import (
    CheckpointError,
    TENSORS_FILE,
    _atomic_write,
    _sub_state,
    check_model_config,
    load_checkpoint,
    load_state_strict,
    optimizer_state_from_tensors,
    save_checkpoint,
)

__all__ = ["LOG_FILE", "TrainConfig", "Trainer", "TrainingDivergedError"]

LOG_FILE = "log.jsonl"

LossFn = Callable[[torch.nn.Module, tuple[torch.Tensor, ...], torch.Generator], torch.Tensor]
EvalFn = Callable[[torch.nn.Module, int], Mapping[str, float]]


class TrainingDivergedError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; no checkpoint was written for that step."""


# ------------------------------------------------------------------------------ config


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_float(name: str, value: Any, *, low: float, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open or high == math.inf else "]"
        raise ValueError(f"{name} must be a finite number in {lo}{low}, {high}{hi}, got {value!r}")


@dataclass
class TrainConfig:
    """Hyperparameters of :class:`Trainer` (JSON-serialisable via ``dataclasses.asdict``).

    ``steps``: total optimizer steps of the run (a resumed run continues up to it).
    ``batch_size``: GLOBAL batch size (split evenly over DDP ranks).
    ``lr``, ``weight_decay``, ``betas``: AdamW. ``warmup_steps``: linear warmup length.
    ``grad_clip``: max global grad L2 norm (None: no clipping; the norm is still logged).
    ``ema_decay``: EMA decay in [0, 1) (None: no EMA model).
    ``seed``: seeds the trainer-owned generators (data order, loss noise).
    ``log_every``: steps per ``log.jsonl`` record. ``eval_every``: steps between
    ``eval_fn`` calls (0: never). ``checkpoint_every``: steps between checkpoints
    (0: only at the end). ``max_seconds``: wall-clock budget of one ``fit()`` call; the
    step during which it runs out is completed, a checkpoint written and
    ``stopped_early`` recorded. ``progress``: show a tqdm bar on stderr.
    """

    steps: int
    batch_size: int
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    seed: int = 0
    log_every: int = 50
    eval_every: int = 0
    checkpoint_every: int = 0
    max_seconds: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_float("lr", self.lr, low=0.0, low_open=True)
        _check_float("weight_decay", self.weight_decay, low=0.0)
        if not isinstance(self.betas, Sequence) or isinstance(self.betas, str) or len(self.betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")
        self.betas = tuple(self.betas)
        for i, b in enumerate(self.betas):
            _check_float(f"betas[{i}]", b, low=0.0, high=1.0, high_open=True)
        _check_int("warmup_steps", self.warmup_steps, 0)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, low=0.0, low_open=True)
        if self.ema_decay is not None:
            _check_float("ema_decay", self.ema_decay, low=0.0, high=1.0, high_open=True)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        _check_int("log_every", self.log_every, 1)
        _check_int("eval_every", self.eval_every, 0)
        _check_int("checkpoint_every", self.checkpoint_every, 0)
        if self.max_seconds is not None:
            _check_float("max_seconds", self.max_seconds, low=0.0, low_open=True)
        if not isinstance(self.progress, bool):
            raise ValueError(f"progress must be a bool, got {self.progress!r}")

    def to_dict(self) -> dict:
        """Plain-JSON dict (``betas`` as a list)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; allowed: {sorted(known)}")
        return cls(**dict(d))


# Fields whose change between the checkpointed run and the resumed one breaks exactness.
_TRAJECTORY_FIELDS = ("batch_size", "lr", "weight_decay", "betas", "warmup_steps",
                      "grad_clip", "ema_decay", "seed")


def _derive_seed(seed: int, stream: str, index: int = 0, extra: int = 0) -> int:
    """Independent 63-bit seed for a named random stream (data / loss, per rank)."""
    digest = hashlib.sha256(f"diffusekit:{seed}:{stream}:{index}:{extra}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Generic training loop; see the module docstring for the exact semantics.

    ``loss_fn(model, batch, generator) -> Tensor[B]`` returns per-example losses for the
    local batch (the trainer averages them); all its randomness must come from
    ``generator``, a CPU generator (e.g. ``torch.randn(x.shape, generator=generator).to(x.device)``). Under
    DDP ``model`` is the DistributedDataParallel wrapper -- call it, and reach the
    underlying module as ``model.module`` if needed. ``eval_fn(model, step) -> dict``
    gets the EMA model when EMA is on (else the raw model in eval mode) and runs on the
    main process only.

    Files (main process only, in ``out_dir``): ``log.jsonl``, ``checkpoint.safetensors``
    and ``checkpoint.json``. Attributes: ``model`` (the module passed in), ``ema_model``
    (or None), ``optimizer``, ``step`` (completed optimizer steps), ``data_generator``,
    ``loss_generator``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: LossFn,
        data: Sequence[torch.Tensor],
        config: TrainConfig,
        *,
        out_dir: str | Path | None = None,
        eval_fn: EvalFn | None = None,
        extra_config: Mapping | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise ValueError("loss_fn must be callable as loss_fn(model, batch, generator)")
        if eval_fn is not None and not callable(eval_fn):
            raise ValueError("eval_fn must be None or callable as eval_fn(model, step)")
        if not isinstance(config, TrainConfig):
            raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
        if isinstance(data, torch.Tensor):
            data = (data,)
        if not isinstance(data, Sequence) or len(data) == 0 or not all(isinstance(t, torch.Tensor) for t in data):
            raise ValueError("data must be a non-empty tuple of tensors sharing their first dimension")
        if any(t.dim() == 0 for t in data) or len({t.shape[0] for t in data}) != 1:
            shapes = [tuple(t.shape) for t in data]
            raise ValueError(f"data tensors must share their first dimension, got shapes {shapes}")
        if extra_config is not None:
            try:
                json.dumps(dict(extra_config), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"extra_config must be a JSON-serialisable mapping: {exc}") from None
        params = list(model.parameters())
        if not params:
            raise ValueError("model has no parameters to train")

        self.config = config
        self.loss_fn = loss_fn
        self.eval_fn = eval_fn
        self.extra_config = dict(extra_config) if extra_config is not None else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.data = tuple(data)
        self.num_examples = int(self.data[0].shape[0])

        self.world_size = dist_utils.world_size()
        self.rank = dist_utils.rank()
        self.is_main = self.rank == 0
        self.distributed = self.world_size > 1
        if dist_utils.launched_distributed() and not dist_utils.is_distributed():
            warnings.warn(
                "WORLD_SIZE>1 but no process group is initialised: every process will train "
                "independently; call diffusekit.training.distributed.init_distributed() first",
                RuntimeWarning,
                stacklevel=2,
            )
        if config.batch_size % self.world_size:
            raise ValueError(
                f"batch_size={config.batch_size} (global) must be divisible by the world size {self.world_size}"
            )
        self.local_batch_size = config.batch_size // self.world_size
        if self.num_examples < config.batch_size:
            raise ValueError(f"dataset has {self.num_examples} examples, fewer than batch_size={config.batch_size}")
        if config.checkpoint_every and self.out_dir is None:
            raise ValueError("checkpoint_every > 0 needs out_dir to write checkpoints to")

        self.model = model
        self.device = params[0].device
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # DDP broadcasts rank 0's parameters and buffers here, so all ranks start equal.
            self.train_model: torch.nn.Module = DistributedDataParallel(model, device_ids=device_ids)
        else:
            self.train_model = model

        # The EMA copy is made after the DDP broadcast so it is identical on every rank.
        self.ema_model: torch.nn.Module | None = None
        if config.ema_decay is not None:
            self.ema_model = copy.deepcopy(model).eval().requires_grad_(False)
            self._ema_params = list(zip(self.ema_model.parameters(), model.parameters()))
            self._ema_buffers = list(zip(self.ema_model.buffers(), model.buffers()))

        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        self.data_generator = torch.Generator(device="cpu")
        self.data_generator.manual_seed(_derive_seed(config.seed, "data"))
        self.loss_generator = torch.Generator(device="cpu")
        self.loss_generator.manual_seed(_derive_seed(config.seed, "loss", self.rank))

        self.step = 0
        self.stopped_early = False
        self._perm: torch.Tensor | None = None
        self._cursor = 0
        self._epoch = 0
        self._loss_history: list[float] = []
        self._grad_norm_history: list[float] = []
        self._evals: list[dict] = []
        self._train_seconds = 0.0  # wall-clock of completed fit() calls (across resumes)
        self._fit_start: float | None = None
        self._last_saved_step: int | None = None

    # ------------------------------------------------------------------ schedule / data

    def lr_at(self, step: int) -> float:
        """Learning rate used for optimizer step ``step`` (1-based)."""
        warm = self.config.warmup_steps
        if warm <= 0:
            return self.config.lr
        return self.config.lr * min(1.0, step / warm)

    @property
    def generators(self) -> dict[str, torch.Generator]:
        """The trainer-owned generators, by name."""
        return {"data": self.data_generator, "loss": self.loss_generator}

    def _next_batch(self) -> tuple[torch.Tensor, ...]:
        b = self.config.batch_size
        if self._perm is None or self._cursor + b > self.num_examples:
            self._perm = torch.randperm(self.num_examples, generator=self.data_generator)
            self._cursor = 0
            self._epoch += 1
        idx = self._perm[self._cursor:self._cursor + b]
        self._cursor += b
        lo = self.rank * self.local_batch_size
        idx = idx[lo:lo + self.local_batch_size]
        return tuple(t[idx.to(t.device)].to(self.device) for t in self.data)

    # ---------------------------------------------------------------------------- EMA

    @torch.no_grad()
    def _ema_update(self) -> None:
        if self.ema_model is None:
            return
        d = self.config.ema_decay
        for e, p in self._ema_params:
            e.mul_(d).add_(p.detach(), alpha=1.0 - d)
        for eb, b in self._ema_buffers:
            eb.copy_(b)

    # ------------------------------------------------------------------------ logging

    def _seconds(self) -> float:
        running = time.perf_counter() - self._fit_start if self._fit_start is not None else 0.0
        return self._train_seconds + running

    def _log(self, record: dict) -> None:
        if self.out_dir is None or not self.is_main:
            return
        with open(self.out_dir / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _trim_log(self) -> None:
        """Drop log records past the current step (left by a run that crashed after its
        last checkpoint, or by an earlier run in a reused directory) and partial lines."""
        path = self.out_dir / LOG_FILE
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= self.step:
                kept.append(line)
        text = "".join(line + "\n" for line in kept)
        _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def _run_eval(self) -> None:
        target = self.ema_model if self.ema_model is not None else self.model
        was_training = target.training
        target.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                metrics = self.eval_fn(target, self.step)
        finally:
            target.train(was_training)
        if not isinstance(metrics, Mapping):
            raise ValueError(f"eval_fn must return a dict of floats, got {type(metrics).__name__}")
        try:
            metrics = {str(k): float(v) for k, v in metrics.items()}
        except (TypeError, ValueError):
            raise ValueError(f"eval_fn must return a dict of floats, got {dict(metrics)!r}") from None
        record = {"type": "eval", "step": self.step, "seconds": round(self._seconds(), 4), "metrics": metrics}
        self._evals.append(record)
        self._log(record)

    # ------------------------------------------------------------------- checkpoints

    def _rng_states(self) -> dict[str, torch.Tensor]:
        """All generator states, per rank (gathered to every rank under DDP)."""
        local = {
            "loss": self.loss_generator.get_state(),
            "torch_cpu": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            local["torch_cuda"] = torch.cuda.get_rng_state(self.device)
        states = {"data": self.data_generator.get_state()}
        for name, state in local.items():
            for r, s in enumerate(dist_utils.all_gather_tensor(state)):
                states[f"{name}.rank{r}"] = s
        return states

    def save(self, path_dir: str | Path | None = None) -> Path | None:
        """Write a checkpoint of the full training state (default: ``out_dir``).

        Under DDP every rank must call this (generator states are gathered); only rank 0
        writes, and all ranks wait until the files are in place. Returns the directory
        (None on other ranks).
        """
        target = Path(path_dir) if path_dir is not None else self.out_dir
        if target is None:
            raise ValueError("save() needs path_dir when the trainer has no out_dir")
        states = self._rng_states()
        written = None
        if self.is_main:
            extra_tensors = {
                "history.loss": torch.tensor(self._loss_history, dtype=torch.float64),
                "history.grad_norm": torch.tensor(self._grad_norm_history, dtype=torch.float64),
            }
            if self._perm is not None:
                extra_tensors["data.permutation"] = self._perm
            written = save_checkpoint(
                target,
                model=self.model,
                ema_model=self.ema_model,
                optimizer=self.optimizer,
                step=self.step,
                generators=states,
                config=self.config.to_dict(),
                extra_config=self.extra_config,
                extra_meta={
                    "world_size": self.world_size,
                    "data": {"num_examples": self.num_examples, "cursor": self._cursor, "epoch": self._epoch},
                    "stopped_early": self.stopped_early,
                    "train_seconds": self._seconds(),
                    "evals": self._evals,
                },
                extra_tensors=extra_tensors,
            )
        self._last_saved_step = self.step
        dist_utils.barrier()
        return written

    def resume(self, path_dir: str | Path) -> dict:
        """Restore model, EMA, optimizer, step, data position, generators and history.

        Call before :meth:`fit` (on every rank under DDP). Raises CheckpointError when
        the checkpoint is unreadable or does not fit (model config, weight shapes,
        optimizer type, dataset size). Changed trajectory hyperparameters or a different
        world size are allowed but warned about, since the continuation is then no
        longer bit-exact. Returns the checkpoint metadata.
        """
        tensors, meta = load_checkpoint(path_dir)
        where = str(Path(path_dir) / TENSORS_FILE)
        check_model_config(meta, self.model, where)
        data_meta = meta.get("data") or {}
        if data_meta.get("num_examples") != self.num_examples:
            raise CheckpointError(
                f"{where}: checkpoint was trained on {data_meta.get('num_examples')} examples "
                f"but data has {self.num_examples}"
            )
        desc = meta.get("optimizer")
        if desc is None or desc.get("class") != type(self.optimizer).__name__:
            got = None if desc is None else desc.get("class")
            raise CheckpointError(f"{where}: optimizer state is {got!r}, expected {type(self.optimizer).__name__}")

        load_state_strict(self.model, _sub_state(tensors, "model."), where)
        if self.ema_model is not None:
            if meta.get("has_ema"):
                load_state_strict(self.ema_model, _sub_state(tensors, "ema."), where)
            else:
                warnings.warn(f"{where} has no EMA weights; EMA restarts from the loaded weights",
                              RuntimeWarning, stacklevel=2)
                self.ema_model.load_state_dict(self.model.state_dict())
        try:
            self.optimizer.load_state_dict(optimizer_state_from_tensors(tensors, desc, self.optimizer))
        except (KeyError, ValueError, RuntimeError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(f"{where}: optimizer state does not fit the model: {msg}") from None

        saved_cfg = meta.get("train_config") or {}
        now_cfg = self.config.to_dict()
        changed = [k for k in _TRAJECTORY_FIELDS if k in saved_cfg and saved_cfg[k] != now_cfg[k]]
        saved_ws = meta.get("world_size", 1)
        if changed and self.is_main:
            warnings.warn(f"resuming with changed {changed}; the continuation is not bit-exact",
                          RuntimeWarning, stacklevel=2)
        saved_extra = meta.get("extra_config")
        if self.extra_config is None:
            self.extra_config = saved_extra  # keep it in the checkpoints this run writes
        elif saved_extra is not None and json.loads(json.dumps(self.extra_config)) != saved_extra and self.is_main:
            warnings.warn("extra_config differs from the checkpoint's; the new one is recorded from now on",
                          RuntimeWarning, stacklevel=2)

        self.step = int(meta["step"])
        self._perm = tensors.get("data.permutation")
        self._cursor = int(data_meta.get("cursor", 0))
        self._epoch = int(data_meta.get("epoch", 0))
        if "rng.data" not in tensors:
            raise CheckpointError(f"{where}: data generator state 'rng.data' is missing")
        self.data_generator.set_state(tensors["rng.data"])
        per_rank = f"rank{self.rank}"
        if saved_ws == self.world_size and f"rng.loss.{per_rank}" in tensors:
            self.loss_generator.set_state(tensors[f"rng.loss.{per_rank}"])
            if f"rng.torch_cpu.{per_rank}" in tensors:
                torch.set_rng_state(tensors[f"rng.torch_cpu.{per_rank}"])
            if self.device.type == "cuda" and f"rng.torch_cuda.{per_rank}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.torch_cuda.{per_rank}"], self.device)
        else:
            self.loss_generator.manual_seed(_derive_seed(self.config.seed, "loss", self.rank, self.step))
            if self.is_main:
                warnings.warn(
                    f"checkpoint was written with world size {saved_ws}, now {self.world_size}: "
                    "loss generators are re-seeded and the continuation is not bit-exact",
                    RuntimeWarning, stacklevel=2,
                )
        self._loss_history = tensors.get("history.loss", torch.zeros(0)).tolist()
        self._grad_norm_history = tensors.get("history.grad_norm", torch.zeros(0)).tolist()
        self._evals = list(meta.get("evals") or [])
        self._train_seconds = float(meta.get("train_seconds", 0.0))
        self.stopped_early = False
        self._last_saved_step = self.step
        return meta

    # ---------------------------------------------------------------------------- fit

    def _grad_norm(self) -> torch.Tensor:
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.config.grad_clip is not None:
            return torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        if not params:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))

    def _history(self, start_step: int, seconds: float) -> dict:
        return {
            "loss": list(self._loss_history),
            "grad_norm": list(self._grad_norm_history),
            "evals": list(self._evals),
            "start_step": start_step,
            "step": self.step,
            "seconds": seconds,
            "stopped_early": self.stopped_early,
        }

    def fit(self) -> dict:
        """Train until ``config.steps`` (or the ``max_seconds`` budget); return the history.

        History: ``loss`` and ``grad_norm`` (pre-clip) per step for the whole run
        including steps before a resume (index ``i`` is step ``i + 1``), ``evals``
        (records ``{"step", "seconds", "metrics"}``), ``start_step``, ``step``,
        ``seconds`` (wall-clock of this call) and ``stopped_early``. Raises
        TrainingDivergedError on a NaN/inf loss or gradient norm before that step's
        update, without writing a checkpoint.
        """
        cfg = self.config
        start_step = self.step
        self.stopped_early = False
        if self.step >= cfg.steps:
            return self._history(start_step, 0.0)
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._trim_log()
        self._fit_start = time.perf_counter()
        interval_loss: list[float] = []
        interval_gn: list[float] = []
        self.train_model.train()
        # with a wall-clock budget the step total is only an upper bound: say so instead of a misleading ETA
        desc = "train" if cfg.max_seconds is None else f"train (stops after {cfg.max_seconds:g} s)"
        bar = tqdm(total=cfg.steps, initial=self.step, desc=desc, file=sys.stderr,
                   disable=not (cfg.progress and self.is_main), dynamic_ncols=True)
        try:
            while self.step < cfg.steps:
                step = self.step + 1
                lr = self.lr_at(step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                batch = self._next_batch()
                losses = self.loss_fn(self.train_model, batch, self.loss_generator)
                if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (self.local_batch_size,):
                    got = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
                    raise ValueError(
                        f"loss_fn must return per-example losses of shape ({self.local_batch_size},), got {got}"
                    )
                loss = losses.mean()
                # Averaged over ranks: the logged value, and one divergence verdict for all ranks.
                loss_value = loss.detach().float()
                if self.distributed:
                    loss_value = dist_utils.all_reduce_sum(loss_value) / self.world_size
                loss_value = loss_value.item()
                if not math.isfinite(loss_value):
                    raise TrainingDivergedError(
                        f"loss is {loss_value} at step {step}; stopped before the update, last checkpoint kept"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = self._grad_norm().item()  # DDP grads are synced: same on all ranks
                if not math.isfinite(grad_norm):
                    raise TrainingDivergedError(
                        f"gradient norm is {grad_norm} at step {step}; stopped before the update, last checkpoint kept"
                    )
                self.optimizer.step()
                self._ema_update()
                self.step = step
                self._loss_history.append(loss_value)
                self._grad_norm_history.append(grad_norm)
                interval_loss.append(loss_value)
                interval_gn.append(grad_norm)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)

                if step % cfg.log_every == 0 or step == cfg.steps:
                    self._flush_log(interval_loss, interval_gn, lr)
                if cfg.eval_every and step % cfg.eval_every == 0 and self.eval_fn is not None and self.is_main:
                    self._run_eval()
                over = cfg.max_seconds is not None and time.perf_counter() - self._fit_start > cfg.max_seconds
                if cfg.max_seconds is not None and self.distributed:
                    over = dist_utils.all_reduce_sum(torch.tensor([float(over)])).item() > 0
                if over and step < cfg.steps:
                    self.stopped_early = True
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not self.stopped_early:
                    self.save()
                if self.stopped_early:
                    break
        finally:
            bar.close()
        self._flush_log(interval_loss, interval_gn, self.lr_at(self.step))
        if self.stopped_early:
            self._log({"type": "stop", "step": self.step, "reason": "max_seconds",
                       "max_seconds": cfg.max_seconds, "seconds": round(self._seconds(), 4)})
        seconds = time.perf_counter() - self._fit_start
        if self.out_dir is not None and self._last_saved_step != self.step:
            self.save()
        self._train_seconds += seconds
        self._fit_start = None
        return self._history(start_step, seconds)

    def _flush_log(self, interval_loss: list[float], interval_gn: list[float], lr: float) -> None:
        if not interval_loss:
            return
        self._log({
            "type": "train",
            "step": self.step,
            "loss": sum(interval_loss) / len(interval_loss),
            "lr": lr,
            "grad_norm": sum(interval_gn) / len(interval_gn),
            "grad_norm_max": max(interval_gn),
            "seconds": round(self._seconds(), 4),
        })
        interval_loss.clear()
        interval_gn.clear()
