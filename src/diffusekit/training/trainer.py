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

Gradient accumulation and world-size-free noise (details and measurements: docs/distributed.md).
``grad_accum_steps = A`` runs each rank's slice as A micro-batches (losses scaled by 1/A, gradients
summed, DDP synchronised on the last), so the update is that of the mean loss over the global batch.
With ``loss_noise="per_example"`` example ``j`` of step ``s``'s global batch draws its noise from its
own generator seeded by ``(seed, s, j)``: a step is then a function of the global batch only, and the
world size, A and a resume at another world size change only float reduction order. Precision:
``precision`` bf16 / fp16 autocasts ``loss_fn`` (weights, optimizer, EMA stay fp32); fp16 adds a
dynamic gradient scaler (overflowing steps are skipped but counted; its state is checkpointed).

LR schedule: for optimizer step ``s`` (1-based) ``lr_s = lr * min(1, s / warmup_steps)``
(constant ``lr`` when ``warmup_steps == 0``); the first step therefore already moves.

EMA: ``ema = decay * ema + (1 - decay) * param`` after every optimizer step, starting
from a copy of the initial weights, with no bias correction or decay warmup (so it is
easy to reason about and to test); buffers are copied.

Interruption. While ``fit()`` runs with an ``out_dir`` in the main thread, SIGINT (Ctrl-C) and SIGTERM
finish the current step, write a checkpoint and raise :class:`TrainingInterrupted` (exit status
``128 + signal``: 130 / 143); a second signal stops at once (the atomic writes keep the previous
checkpoint). Under DDP every rank stops at the same step.

Layout: :mod:`.config` (``TrainConfig``), :mod:`.state` (what a checkpoint of the trainer holds:
save / resume), :mod:`.interrupt` (SIGINT/SIGTERM), this module (the loop).
"""

from __future__ import annotations

import copy
import json
import math
import signal
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from .. import runtime
from ..io import atomic_write_text
from . import distributed as dist_utils
from .config import TrainConfig
from .interrupt import SignalStop, TrainingInterrupted
from .state import LOG_FILE, derive_seed, restore_trainer, save_trainer, sweep_orphans

THREAD_CHECK_STEPS = 5  # how often a thread governor is consulted (it acts at most every 0.5 s)

__all__ = ["LOG_FILE", "TrainConfig", "Trainer", "TrainingDivergedError", "TrainingInterrupted"]

LossFn = Callable[[torch.nn.Module, tuple[torch.Tensor, ...], torch.Generator | list[torch.Generator]], torch.Tensor]
EvalFn = Callable[[torch.nn.Module, int], Mapping[str, float]]

class TrainingDivergedError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; no checkpoint was written for that step."""


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Generic training loop; see the module docstring for the exact semantics.

    ``loss_fn(model, batch, generator) -> Tensor[B]`` returns per-example losses for the
    local (micro-)batch (the trainer averages them); all its randomness must come from
    ``generator``, a CPU generator (e.g. ``torch.randn(x.shape, generator=generator).to(x.device)``), or
    with ``loss_noise="per_example"`` a list of B CPU generators, one per example. Under
    DDP ``model`` is the DistributedDataParallel wrapper -- call it, and reach the
    underlying module as ``model.module`` if needed. ``eval_fn(model, step) -> dict``
    gets the EMA model when EMA is on (else the raw model in eval mode) and runs on the
    main process only.

    ``network_device`` (e.g. ``"cuda"``): move the model there and put it behind
    :func:`~diffusekit.runtime.device_network`'s boundary; data, ``loss_fn`` and the schedules stay on the
    CPU, only the network's forward and backward run on the device (``diffusekit train --device``).

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
        thread_governor: Callable[[], int] | None = None,
        network_device: str | torch.device | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise ValueError("loss_fn must be callable as loss_fn(model, batch, generator)")
        if thread_governor is not None and not callable(thread_governor):
            raise ValueError("thread_governor must be None or a callable returning the thread count")
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
        # re-fits torch's thread count to the free cores (runtime.ThreadGovernor) every THREAD_CHECK_STEPS
        # steps; single-process runs only (under DDP every rank keeps its threads)
        self.thread_governor = thread_governor if thread_governor is not None and not dist_utils.world_size() > 1 \
            else None
        self._steps_by_threads: dict[str, int] = {}
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
        if config.batch_size % (self.world_size * config.grad_accum_steps):
            raise ValueError(
                f"batch_size={config.batch_size} (global) must be divisible by the world size {self.world_size} "
                f"times grad_accum_steps={config.grad_accum_steps}"
            )
        self.local_batch_size = config.batch_size // self.world_size
        self.micro_batch_size = self.local_batch_size // config.grad_accum_steps
        if self.num_examples < config.batch_size:
            raise ValueError(f"dataset has {self.num_examples} examples, fewer than batch_size={config.batch_size}")
        if config.checkpoint_every and self.out_dir is None:
            raise ValueError("checkpoint_every > 0 needs out_dir to write checkpoints to")

        self.model = model
        runtime.autocast_dtype(config.precision)  # checks the name
        forward_model = model
        if network_device is not None:  # the network on the device, data and loss on the CPU
            forward_model = runtime.device_network(model, network_device, config.precision,
                                                   channels_last=config.channels_last)
        elif config.channels_last:
            model.to(memory_format=torch.channels_last)
        net_device = params[0].device
        self.device = torch.device("cpu") if network_device is not None else net_device  # where batches go
        self.grad_scaler = runtime.grad_scaler(self.device, config.precision)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [net_device.index] if net_device.type == "cuda" else None
            # DDP broadcasts rank 0's parameters and buffers here, so all ranks start equal.
            self.train_model: torch.nn.Module = DistributedDataParallel(forward_model, device_ids=device_ids)
        else:
            self.train_model = forward_model
        self._ddp_model = self.train_model
        if config.compile:
            self.train_model = runtime.compile_module(self.train_model, self.device)

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
        self.data_generator.manual_seed(derive_seed(config.seed, "data"))
        self.loss_generator = torch.Generator(device="cpu")
        self.loss_generator.manual_seed(derive_seed(config.seed, "loss", self.rank))

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
        self._stop = SignalStop()  # set by SIGINT/SIGTERM during fit()

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

    def _next_batch(self) -> tuple[tuple[torch.Tensor, ...], range]:
        """This rank's slice of the next global batch, and the slice's positions in the global batch."""
        b = self.config.batch_size
        if self._perm is None or self._cursor + b > self.num_examples:
            self._perm = torch.randperm(self.num_examples, generator=self.data_generator)
            self._cursor = 0
            self._epoch += 1
        idx = self._perm[self._cursor:self._cursor + b]
        self._cursor += b
        lo = self.rank * self.local_batch_size
        idx = idx[lo:lo + self.local_batch_size]
        # sorted reads are kinder to a memory-mapped file; the rows go back into permutation order after
        order, inverse = torch.sort(idx)[0], torch.argsort(torch.argsort(idx))
        batch = tuple(t[order.to(t.device)][inverse.to(t.device)].to(self.device) for t in self.data)
        if self.config.channels_last:
            batch = tuple(runtime.to_channels_last(t) for t in batch)
        return batch, range(lo, lo + self.local_batch_size)

    def example_generators(self, step: int, positions: Sequence[int]) -> list[torch.Generator]:
        """``loss_noise="per_example"``: one CPU generator per example, seeded by (seed, step, position in the
        global batch), so an example's noise does not depend on which rank or micro-batch computes it."""
        return [torch.Generator().manual_seed(derive_seed(self.config.seed, "loss-example", step, j))
                for j in positions]

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
        atomic_write_text(path, "".join(line + "\n" for line in kept))

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

    def save(self, path_dir: str | Path | None = None) -> Path | None:
        """Write a checkpoint of the full training state (default: ``out_dir``).

        Under DDP every rank must call this (generator states are gathered); only rank 0
        writes, and all ranks wait until the files are in place. Returns the directory
        (None on other ranks).
        """
        target = Path(path_dir) if path_dir is not None else self.out_dir
        if target is None:
            raise ValueError("save() needs path_dir when the trainer has no out_dir")
        return save_trainer(self, target)

    def resume(self, path_dir: str | Path) -> dict:
        """Restore model, EMA, optimizer, step, data position, generators and history.

        Call before :meth:`fit` (on every rank under DDP). Raises CheckpointError when
        the checkpoint is unreadable or does not fit (model config, weight shapes,
        optimizer type, dataset size). Changed trajectory hyperparameters or a different
        world size are allowed but warned about, since the continuation is then no
        longer bit-exact. Returns the checkpoint metadata.
        """
        return restore_trainer(self, path_dir)

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
            "steps_by_threads": dict(self._steps_by_threads),
        }

    def fit(self) -> dict:
        """Train until ``config.steps`` (or the ``max_seconds`` budget); return the history.

        History: ``loss`` and ``grad_norm`` (pre-clip) per step for the whole run
        including steps before a resume (index ``i`` is step ``i + 1``), ``evals``
        (records ``{"step", "seconds", "metrics"}``), ``start_step``, ``step``,
        ``seconds`` (wall-clock of this call) and ``stopped_early``. Raises
        TrainingDivergedError on a NaN/inf loss or gradient norm before that step's
        update, without writing a checkpoint, and :class:`TrainingInterrupted` after
        SIGINT/SIGTERM, once the state of the last completed step is checkpointed.
        """
        cfg = self.config
        start_step = self.step
        self.stopped_early = False
        if self.step >= cfg.steps:
            return self._history(start_step, 0.0)
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            sweep_orphans(self.out_dir)
            self._trim_log()
        self._fit_start = time.perf_counter()
        interval_loss: list[float] = []
        interval_gn: list[float] = []
        self.train_model.train()
        # with a wall-clock budget the step total is only an upper bound: say so instead of a misleading ETA
        desc = "train" if cfg.max_seconds is None else f"train (stops after {cfg.max_seconds:g} s)"
        bar = tqdm(total=cfg.steps, initial=self.step, desc=desc, file=sys.stderr,
                   disable=not (cfg.progress and self.is_main), dynamic_ncols=True)
        interrupted: int | None = None
        # with an out_dir, SIGINT/SIGTERM stop after the current step, once it is checkpointed
        with self._stop.catching() if self.out_dir is not None else nullcontext():
            try:
                while self.step < cfg.steps:
                    lr = self._train_step(interval_loss, interval_gn)
                    step = self.step
                    bar.update(1)
                    bar.set_postfix(loss=f"{interval_loss[-1]:.4g}", refresh=False)
                    key = str(torch.get_num_threads())
                    self._steps_by_threads[key] = self._steps_by_threads.get(key, 0) + 1
                    if self.thread_governor is not None and step % THREAD_CHECK_STEPS == 0:
                        self.thread_governor()

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
                    interrupted = self._stop.agreed(self.distributed)
                    if self.stopped_early or (interrupted is not None and step < cfg.steps):
                        break
            finally:
                bar.close()
            self._flush_log(interval_loss, interval_gn, self.lr_at(self.step))
            if interrupted is not None and self.step < cfg.steps:
                self._log({"type": "stop", "step": self.step, "reason": signal.Signals(interrupted).name,
                           "seconds": round(self._seconds(), 4)})
            elif self.stopped_early:
                self._log({"type": "stop", "step": self.step, "reason": "max_seconds",
                           "max_seconds": cfg.max_seconds, "seconds": round(self._seconds(), 4)})
            seconds = time.perf_counter() - self._fit_start
            if self.out_dir is not None and self._last_saved_step != self.step:
                self.save()
        self._train_seconds += seconds
        self._fit_start = None
        if interrupted is not None and self.step < cfg.steps:
            raise TrainingInterrupted(interrupted, self.step, self.out_dir)
        return self._history(start_step, seconds)

    def _train_step(self, interval_loss: list[float], interval_gn: list[float]) -> float:
        """One optimizer step (step ``self.step + 1``); returns its learning rate."""
        step = self.step + 1
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch, positions = self._next_batch()
        accum, m = self.config.grad_accum_steps, self.micro_batch_size
        scaler = self.grad_scaler
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float32)
        for k in range(accum):
            micro = tuple(t[k * m:(k + 1) * m] for t in batch) if accum > 1 else batch
            if self.config.loss_noise == "per_example":
                generator = self.example_generators(step, positions[k * m:(k + 1) * m])
            else:
                generator = self.loss_generator
            last = k == accum - 1
            sync = self._ddp_model.no_sync() if self.distributed and not last else nullcontext()
            with sync:
                with runtime.autocast(self.device, self.config.precision):
                    losses = self.loss_fn(self.train_model, micro, generator)
                if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (m,):
                    got = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
                    raise ValueError(f"loss_fn must return per-example losses of shape ({m},), got {got}")
                loss = losses.float().mean() / accum
                (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_sum += loss.detach().float().cpu()
        # Averaged over ranks: the logged value, and one divergence verdict for all ranks (before the update).
        loss_value = loss_sum
        if self.distributed:
            loss_value = dist_utils.all_reduce_sum(loss_value) / self.world_size
        loss_value = loss_value.item()
        if not math.isfinite(loss_value):
            raise TrainingDivergedError(f"loss is {loss_value} at step {step}; {self._kept()}")
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        grad_norm = self._grad_norm().item()  # DDP grads are synced: same on all ranks
        if scaler is not None:  # an fp16 overflow skips this update and lowers the scale; it is not divergence
            scaler.step(self.optimizer)
            scaler.update()
        else:
            if not math.isfinite(grad_norm):
                raise TrainingDivergedError(f"gradient norm is {grad_norm} at step {step}; {self._kept()}")
            self.optimizer.step()
        self._ema_update()
        self.step = step
        self._loss_history.append(loss_value)
        self._grad_norm_history.append(grad_norm)
        interval_loss.append(loss_value)
        interval_gn.append(grad_norm)
        return lr

    def _kept(self) -> str:
        """How a diverged run leaves its folder, for the error message."""
        if self.out_dir is None:
            return "stopped before the update (no output folder)"
        if self._last_saved_step is None:
            return "stopped before the update; no checkpoint was written (lower the lr or checkpoint more often)"
        return f"stopped before the update, last checkpoint (step {self._last_saved_step}) kept"

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
