"""Multi-task loss balancers for ANT (Go et al. 2023, arXiv 2306.00354, Sec. 4.2): one task per timestep interval.

A balancer turns the k per-interval losses L_k (the mean loss of the batch slice whose timesteps fall in interval
k) into gradients on the model parameters: ``balancer.backward(task_losses, params)`` replaces
``loss.backward()`` and leaves ``p.grad`` set; ``balancer.step()`` runs after the model's optimizer step (it
updates the balancer's own parameters, if any); ``balancer.weights()`` gives the current task weights to log.

* ``MeanBalancer``: L = (1/k) sum_k L_k (no balancing; with equal slices this is the plain batch mean).
* ``UncertaintyWeighting``: Kendall et al. 2018 (arXiv 1705.07115) as in ANT's code,
  L = sum_k 1/2 (exp(-s_k) L_k / k + s_k), learnable s_k (init 0) with their own Adam (lr 0.025, wd 0).
* ``PCGrad``: Yu et al. 2020 (arXiv 2001.06782): per-task gradients g_k of L_k / k; for each i, over the other
  tasks j in random order, if g_i . g_j < 0 then g_i <- g_i - (g_i . g_j / |g_j|^2) g_j; the update is sum_i g_i.
* ``NashMTL``: Navon et al. 2022 (arXiv 2202.01017): every ``update_every`` steps, with G the (k, P) matrix of
  task gradients and M = G G^T / |G G^T|_F, solve M alpha = 1 / alpha, alpha > 0; the loss is
  sum_k alpha_k L_k / k (alpha kept between updates).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

__all__ = ["BALANCERS", "MeanBalancer", "NashMTL", "PCGrad", "UncertaintyWeighting", "make_balancer",
           "nash_weights", "pcgrad_project", "task_gradients"]

BALANCERS = ("mean", "uw", "pcgrad", "nash")


def _check_losses(task_losses: torch.Tensor, num_tasks: int | None = None) -> None:
    if not isinstance(task_losses, torch.Tensor) or task_losses.dim() != 1 or task_losses.numel() == 0:
        raise ValueError("task_losses must be a non-empty 1-D tensor of per-task losses")
    if num_tasks is not None and task_losses.numel() != num_tasks:
        raise ValueError(f"expected {num_tasks} task losses, got {task_losses.numel()}")


def task_gradients(task_losses: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """(k, P) matrix of flattened gradients d L_k / d theta (zeros for parameters a task does not reach)."""
    rows = []
    for k in range(task_losses.numel()):
        grads = torch.autograd.grad(task_losses[k], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, params)]))
    return torch.stack(rows)


def _set_grads(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype).clone()
        offset += n


class MeanBalancer:
    """No balancing: L = (1/k) sum_k L_k, one backward pass."""

    name = "mean"

    def backward(self, task_losses: torch.Tensor, params: list[torch.nn.Parameter]) -> None:
        """Set ``p.grad`` to d/dtheta of the mean task loss."""
        _check_losses(task_losses)
        task_losses.mean().backward()

    def step(self) -> None:
        """Nothing to update."""

    def weights(self) -> list[float] | None:
        """No learned weights."""
        return None


class UncertaintyWeighting(torch.nn.Module):
    """Uncertainty weighting (Kendall, Gal & Cipolla 2018, arXiv 1705.07115) as ANT-UW uses it
    (arXiv 2306.00354, Sec. 4.2; ANT code util/uw_util.py):

        L = sum_k 1/2 (exp(-s_k) L_k / k + s_k),   dL/ds_k = 1/2 (1 - exp(-s_k) L_k / k),

    s_k = log sigma_k^2 learnable (init 0), trained by their own Adam (``lr`` 0.025, no weight decay); the
    task weights exp(-s_k) / 2 settle at k / (2 L_k), so intervals with a small loss (low noise) get a large
    weight."""

    name = "uw"

    def __init__(self, num_tasks: int, lr: float = 0.025):
        super().__init__()
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self.num_tasks = num_tasks
        self.log_vars = torch.nn.Parameter(torch.zeros(num_tasks))
        self.optimizer = torch.optim.Adam([self.log_vars], lr=lr, weight_decay=0.0)

    def objective(self, task_losses: torch.Tensor) -> torch.Tensor:
        """The scalar UW loss sum_k 1/2 (exp(-s_k) L_k / k + s_k)."""
        _check_losses(task_losses, self.num_tasks)
        s = self.log_vars.to(task_losses.dtype)
        return 0.5 * (torch.exp(-s) * task_losses / self.num_tasks + s).sum()

    def backward(self, task_losses: torch.Tensor, params: list[torch.nn.Parameter]) -> None:
        """Gradients of the UW objective on the model parameters and on s."""
        self.optimizer.zero_grad(set_to_none=True)
        self.objective(task_losses).backward()

    def step(self) -> None:
        """One Adam step on s."""
        self.optimizer.step()

    def weights(self) -> list[float]:
        """Task weights exp(-s_k) / 2."""
        return (0.5 * torch.exp(-self.log_vars.detach())).tolist()


def pcgrad_project(grads: torch.Tensor, generator: random.Random | None = None) -> torch.Tensor:
    """PCGrad's gradient surgery (Yu et al. 2020, arXiv 2001.06782, Alg. 1) on the (k, P) task gradients:
    for each i, g_i' starts at g_i and for the other tasks j in random order, if g_i' . g_j < 0 then
    g_i' <- g_i' - (g_i' . g_j / |g_j|^2) g_j (projections use the original g_j). Returns the (k, P) projected
    gradients (their sum is the update). Shapes: grads (k, P) -> (k, P)."""
    if grads.dim() != 2:
        raise ValueError(f"grads must be a (k, P) matrix, got shape {tuple(grads.shape)}")
    rng = generator if generator is not None else random.Random(0)
    k = grads.shape[0]
    out = grads.clone()
    norms_sq = (grads * grads).sum(1)
    for i in range(k):
        others = [j for j in range(k) if j != i]
        rng.shuffle(others)
        for j in others:
            dot = torch.dot(out[i], grads[j])
            if dot < 0 and norms_sq[j] > 0:
                out[i] = out[i] - dot / norms_sq[j] * grads[j]
    return out


class PCGrad:
    """PCGrad (Yu et al. 2020, arXiv 2001.06782) over the k interval tasks L_k / k (ANT's mtl_library/pcgrad):
    k backward passes, ``pcgrad_project``, then theta.grad = sum_i g_i'. ``seed`` fixes the random task order."""

    name = "pcgrad"

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.conflicts = 0  # pairs (i, j) with g_i . g_j < 0 in the last step

    def backward(self, task_losses: torch.Tensor, params: list[torch.nn.Parameter]) -> None:
        """Set ``p.grad`` to the sum of the projected gradients of L_k / k."""
        _check_losses(task_losses)
        grads = task_gradients(task_losses / task_losses.numel(), params)
        dots = grads @ grads.T
        self.conflicts = int(((dots < 0).sum().item()) // 2)
        _set_grads(params, pcgrad_project(grads, self.rng).sum(0))

    def step(self) -> None:
        """Nothing to update."""

    def weights(self) -> None:
        """No task weights."""
        return None


def nash_weights(gram: torch.Tensor | np.ndarray, *, max_iter: int = 100, normalise: bool = True) -> np.ndarray:
    """The Nash bargaining weights of Nash-MTL (Navon et al. 2022, arXiv 2202.01017, Sec. 3): alpha > 0 with

        M alpha = 1 / alpha   (elementwise; M = G G^T / |G G^T|_F when ``normalise``),

    found as the unique minimiser of the strictly convex f(alpha) = 1/2 alpha^T M alpha - sum_k log alpha_k
    (grad f = M alpha - 1/alpha) by L-BFGS-B (scipy) on alpha in [1e-8, 1e4], at most ``max_iter`` iterations
    (a stand-in for the paper's sequence of cvxpy convex programs: same fixed point, no extra dependency).
    ``gram``: the (k, k) Gram matrix G G^T of the task gradients. Returns alpha (k,) float64."""
    from scipy.optimize import minimize

    m = np.asarray(gram.detach().cpu().double() if isinstance(gram, torch.Tensor) else gram, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.all(np.isfinite(m)):
        raise ValueError(f"gram must be a finite square matrix, got shape {m.shape}")
    if normalise:
        scale = np.linalg.norm(m)
        if scale > 0:
            m = m / scale
    k = m.shape[0]

    def f(alpha):
        return 0.5 * alpha @ m @ alpha - np.log(alpha).sum(), m @ alpha - 1.0 / alpha

    res = minimize(f, np.ones(k), jac=True, method="L-BFGS-B", bounds=[(1e-8, 1e4)] * k,
                   options={"maxiter": max_iter, "gtol": 1e-10, "ftol": 1e-14})
    return res.x


class NashMTL:
    """Nash-MTL (Navon et al. 2022, arXiv 2202.01017) over the k interval tasks, as in ANT's mtl_library/nash:
    every ``update_every`` steps (and at the first) compute the task gradients G of L_k, solve
    M alpha = 1/alpha (``nash_weights``); every step backpropagate sum_k alpha_k L_k / k."""

    name = "nash"

    def __init__(self, num_tasks: int, update_every: int = 25, max_iter: int = 100):
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every must be a positive int, got {update_every!r}")
        self.num_tasks = num_tasks
        self.update_every = update_every
        self.max_iter = max_iter
        self.alpha = np.ones(num_tasks)
        self.calls = 0

    def backward(self, task_losses: torch.Tensor, params: list[torch.nn.Parameter]) -> None:
        """Refresh alpha every ``update_every`` calls, then backpropagate sum_k alpha_k L_k / k."""
        _check_losses(task_losses, self.num_tasks)
        if self.calls % self.update_every == 0:
            grads = task_gradients(task_losses, params).double()
            self.alpha = nash_weights(grads @ grads.T, max_iter=self.max_iter)
        self.calls += 1
        alpha = torch.as_tensor(self.alpha, dtype=task_losses.dtype, device=task_losses.device)
        (alpha * task_losses).sum().div(self.num_tasks).backward()

    def step(self) -> None:
        """Nothing to update (alpha is solved, not learned)."""

    def weights(self) -> list[float]:
        """The current alpha."""
        return [float(a) for a in self.alpha]


def make_balancer(name: str, num_tasks: int, *, seed: int = 0, uw_lr: float = 0.025, nash_every: int = 25):
    """A balancer by name: ``mean``, ``uw``, ``pcgrad`` or ``nash``."""
    if name == "mean":
        return MeanBalancer()
    if name == "uw":
        return UncertaintyWeighting(num_tasks, lr=uw_lr)
    if name == "pcgrad":
        return PCGrad(seed)
    if name == "nash":
        return NashMTL(num_tasks, update_every=nash_every)
    raise ValueError(f"unknown balancer {name!r}; allowed: {', '.join(BALANCERS)}")
