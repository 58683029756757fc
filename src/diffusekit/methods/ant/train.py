"""ANT training: timestep intervals as tasks, stratified batches and a multi-task balancer (Go et al. 2023,
arXiv 2306.00354), plus the task affinity score used to inspect (and optionally cluster) the timesteps.

``train_intervals`` is a small dedicated loop rather than a hook in :class:`~diffusekit.training.Trainer`: the
balancers need the k per-interval losses (not the batch mean), PCGrad needs one backward pass per task and UW
has its own optimizer, none of which fits the generic trainer's "mean of per-example losses" contract. The loop
reuses :class:`~diffusekit.training.TrainConfig` (steps, batch size, AdamW settings, warmup, grad clip, EMA,
seed) with the trainer's semantics (``lr_s = lr min(1, s / warmup)``, ``ema = d ema + (1 - d) theta`` after
every step, gradient-norm clipping), but no checkpoints, DDP or resume.

Random streams are separate and seeded from ``config.seed``: the data order, the noise eps and the timesteps.
So two arms with the same seed see the same images in the same order with the same noise; only the timesteps
(stratified or not) and what the arm does with the losses differ.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from tqdm import tqdm

from ...core import noise
from ...core.schedules import VPDiscrete
from ...training.config import TrainConfig
from ...training.losses import DiffusionLoss
from ...training.state import derive_seed
from .balancing import MeanBalancer, make_balancer

__all__ = ["check_intervals", "diffusion_loss_at", "interval_of", "loss_by_interval", "stratified_timesteps",
           "task_affinity", "train_intervals"]


def check_intervals(intervals: Sequence[tuple[int, int]], num_timesteps: int) -> list[tuple[int, int]]:
    """``intervals`` as a list of inclusive (l, r) pairs that are contiguous and cover 0..num_timesteps-1;
    ValueError otherwise."""
    out = [(int(lo), int(hi)) for lo, hi in intervals]
    if not out or out[0][0] != 0 or out[-1][1] != num_timesteps - 1 or any(lo > hi for lo, hi in out) or any(
            out[j + 1][0] != out[j][1] + 1 for j in range(len(out) - 1)):
        raise ValueError(f"intervals must be contiguous inclusive (l, r) pairs covering 0..{num_timesteps - 1}, "
                         f"got {out}")
    return out


def interval_of(timesteps: torch.Tensor, intervals: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Index of the interval holding each integer timestep (same shape as ``timesteps``)."""
    ends = torch.tensor([hi for _, hi in intervals])
    return torch.bucketize(timesteps.long(), ends, right=False)


def stratified_timesteps(intervals: Sequence[tuple[int, int]], batch: int, generator: torch.Generator | None = None
                         ) -> torch.Tensor:
    """ANT's stratified batch: batch / k integer timesteps drawn uniformly from each interval, grouped by
    interval (rows [j B/k, (j+1) B/k) belong to interval j). Shape (batch,), int64."""
    k = len(intervals)
    if batch % k:
        raise ValueError(f"batch size {batch} must be divisible by the number of intervals {k}")
    per = batch // k
    lo = torch.tensor([lo for lo, _ in intervals]).repeat_interleave(per)
    size = torch.tensor([hi - lo + 1 for lo, hi in intervals]).repeat_interleave(per)
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    return lo + torch.minimum((u * size).long(), size - 1)


def diffusion_loss_at(loss: DiffusionLoss, net: torch.nn.Module, x0: torch.Tensor, t: torch.Tensor,
                      eps: torch.Tensor, labels: torch.Tensor | None = None, generator=None) -> torch.Tensor:
    """Per-example loss of ``DiffusionLoss`` at given times t (B,) and noise eps (shaped like x0):
    L_i = w(t_i) mean_j (F(x_t, t_i)_j - target_j)^2 with x_t = alpha_t x0 + sigma_t eps (same prediction type,
    weighting and input scaling as ``loss``). ``generator`` only feeds label dropout, if any."""
    return loss.loss_at(net, x0, t, eps, labels, generator)


def _check_schedule(loss: DiffusionLoss) -> VPDiscrete:
    if not isinstance(loss.schedule, VPDiscrete):
        raise ValueError(f"ANT needs a discrete schedule (vp_discrete), got {type(loss.schedule).__name__}")
    return loss.schedule


def train_intervals(net: torch.nn.Module, loss: DiffusionLoss, data: Sequence[torch.Tensor], config: TrainConfig,
                    *, intervals: Sequence[tuple[int, int]] | None = None, balancer="mean",
                    eval_fn: Callable[[torch.nn.Module, int], Mapping[str, float]] | None = None,
                    eval_every: int = 0, progress: bool = False) -> tuple[torch.nn.Module, dict]:
    """Train ``net`` with ANT's multi-task objective (Go et al. 2023, arXiv 2306.00354, Sec. 4.2).

    ``intervals`` (k inclusive timestep intervals, e.g. from ``cluster_timesteps``): every batch holds B/k
    examples per interval (``stratified_timesteps``) and the k task losses L_k (slice means of
    ``diffusion_loss_at``) go to ``balancer`` (a name in ``BALANCERS`` or an object with
    ``backward(task_losses, params)``, ``step()``, ``weights()``). ``intervals=None``: the vanilla objective,
    timesteps uniform on 0..T-1 and one task (the batch mean). ``data``: (x0,) or (x0, labels).
    ``eval_fn(model, step) -> dict`` runs every ``eval_every`` steps and at the end on the EMA model (or the
    raw net without EMA), under a forked RNG.

    Returns ``(eval_model, history)``: history ``loss`` (batch mean per step), ``task_loss`` (per step, k
    values), ``weights`` (balancer weights every ``config.log_every`` steps: ``[step, [w_k]]``), ``evals``
    (``{"step", **metrics}``), ``intervals``, ``balancer``, ``seconds``.
    """
    schedule = _check_schedule(loss)
    data = tuple(data) if not isinstance(data, torch.Tensor) else (data,)
    x_all = data[0]
    labels_all = data[1] if len(data) > 1 else None
    n = x_all.shape[0]
    if n < config.batch_size:
        raise ValueError(f"dataset has {n} examples, fewer than batch_size={config.batch_size}")
    T = schedule.num_train_timesteps
    if intervals is not None:
        intervals = check_intervals(intervals, T)
    k = len(intervals) if intervals is not None else 1
    if isinstance(balancer, str):
        balancer = make_balancer(balancer, k, seed=config.seed)
    if balancer is None:
        balancer = MeanBalancer()
    if intervals is not None and config.batch_size % k:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of intervals {k}")

    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    ema = copy.deepcopy(net).eval().requires_grad_(False) if config.ema_decay is not None else None
    g_data = torch.Generator().manual_seed(derive_seed(config.seed, "data"))
    g_noise = torch.Generator().manual_seed(derive_seed(config.seed, "ant-noise"))
    g_time = torch.Generator().manual_seed(derive_seed(config.seed, "ant-time"))
    history = {"loss": [], "task_loss": [], "weights": [], "evals": [], "balancer": getattr(balancer, "name", "?"),
               "intervals": [list(iv) for iv in intervals] if intervals is not None else None}

    def run_eval(step: int) -> None:
        if eval_fn is None:
            return
        target = ema if ema is not None else net
        was = target.training
        target.eval()
        with torch.random.fork_rng():
            metrics = eval_fn(target, step)
        target.train(was)
        history["evals"].append({"step": step, **{key: float(v) for key, v in metrics.items()}})

    perm, cursor = None, n
    t0 = time.perf_counter()
    net.train()
    for step in tqdm(range(1, config.steps + 1), desc=f"ant {history['balancer']}", file=sys.stderr,
                     disable=not progress, leave=False):
        if cursor + config.batch_size > n:
            perm, cursor = torch.randperm(n, generator=g_data), 0
        idx = perm[cursor:cursor + config.batch_size]
        cursor += config.batch_size
        x0 = x_all[idx]
        labels = labels_all[idx] if labels_all is not None else None
        eps = noise.randn(x0.shape, g_noise, dtype=x0.dtype)
        n_t = stratified_timesteps(intervals if intervals is not None else [(0, T - 1)], config.batch_size, g_time)
        t = schedule.t_of_timestep(n_t)

        lr = config.lr * (min(1.0, step / config.warmup_steps) if config.warmup_steps > 0 else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        slices = [slice(j * (config.batch_size // k), (j + 1) * (config.batch_size // k)) for j in range(k)]
        per_example = diffusion_loss_at(loss, net, x0, t, eps, labels, g_noise)
        task_losses = torch.stack([per_example[s].mean() for s in slices])
        balancer.backward(task_losses, params)
        batch_loss = float(task_losses.detach().mean())
        if not math.isfinite(batch_loss):
            raise FloatingPointError(f"loss is {batch_loss} at step {step}")
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        balancer.step()
        if ema is not None:
            with torch.no_grad():
                for e, p in zip(ema.parameters(), net.parameters()):
                    e.lerp_(p.detach(), 1.0 - config.ema_decay)
                for eb, b in zip(ema.buffers(), net.buffers()):
                    eb.copy_(b)
        history["loss"].append(batch_loss)
        history["task_loss"].append(task_losses.detach().tolist())
        if step % config.log_every == 0 or step == config.steps:
            history["weights"].append([step, balancer.weights()])
        if eval_every and step % eval_every == 0 and step != config.steps:
            run_eval(step)
    run_eval(config.steps)
    history["seconds"] = time.perf_counter() - t0
    return (ema if ema is not None else net.eval()), history


def task_affinity(net: torch.nn.Module, loss: DiffusionLoss, x0: torch.Tensor, timesteps: Sequence[int], *,
                  labels: torch.Tensor | None = None, batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """Task affinity score (ANT, arXiv 2306.00354, Sec. 4.1): TAS[i, j] = cos(g_i, g_j), the cosine similarity of
    the full-model gradients g_i = d/dtheta (1/N) sum_n L(x0_n, t_i, eps_n) of the loss at timesteps i and j,
    over the same N images and the same noise eps_n for every timestep (so only the timestep differs).

    ``timesteps``: n integer timesteps; ``x0`` (N, ...) the images (``labels`` their classes, if the net is
    conditional); gradients are accumulated in chunks of ``batch_size``. Returns TAS (n, n) float64 with unit
    diagonal. Cost: n x N forward/backward passes."""
    schedule = _check_schedule(loss)
    params = [p for p in net.parameters() if p.requires_grad]
    eps = noise.randn(x0.shape, torch.Generator().manual_seed(seed), dtype=x0.dtype)
    was = net.training
    net.eval()
    rows = []
    for n_t in timesteps:
        grads = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        for start in range(0, x0.shape[0], batch_size):
            s = slice(start, start + batch_size)
            xb = x0[s]
            t = schedule.t_of_timestep(torch.full((xb.shape[0],), int(n_t)))
            lab = labels[s] if labels is not None else None
            total = diffusion_loss_at(loss, net, xb, t, eps[s], lab).sum() / x0.shape[0]
            for acc, g in zip(grads, torch.autograd.grad(total, params, allow_unused=True)):
                if g is not None:
                    acc += g.double()
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    net.train(was)
    g = torch.stack(rows)
    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return g @ g.T


@torch.no_grad()
def loss_by_interval(net: torch.nn.Module, loss: DiffusionLoss, x0: torch.Tensor,
                     intervals: Sequence[tuple[int, int]], *, labels: torch.Tensor | None = None,
                     timesteps_per_interval: int = 4, seed: int = 0, batch_size: int = 512) -> list[float]:
    """Held-out denoising loss per timestep interval: for interval [l, r], the mean of ``diffusion_loss_at`` over
    the images x0 (fixed noise from ``seed``) at ``timesteps_per_interval`` evenly spaced timesteps of [l, r]
    (the same timesteps and noise every call, so curves over training are comparable)."""
    schedule = _check_schedule(loss)
    intervals = check_intervals(intervals, schedule.num_train_timesteps)
    eps = noise.randn(x0.shape, torch.Generator().manual_seed(seed), dtype=x0.dtype)
    out = []
    for lo, hi in intervals:
        steps = torch.linspace(lo, hi, timesteps_per_interval).round().long().unique()
        total, count = 0.0, 0
        for n_t in steps:
            for start in range(0, x0.shape[0], batch_size):
                s = slice(start, start + batch_size)
                t = schedule.t_of_timestep(torch.full((x0[s].shape[0],), int(n_t)))
                lab = labels[s] if labels is not None else None
                total += float(diffusion_loss_at(loss, net, x0[s], t, eps[s], lab).sum())
                count += x0[s].shape[0]
        out.append(total / count)
    return out
