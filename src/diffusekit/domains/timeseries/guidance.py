"""TSDiff self-guidance (Kollovieh et al., NeurIPS 2023, arXiv 2307.11494, Sec. 3.1, eqs. 7-10).

An unconditional model p(x) over whole windows is steered towards observations y on a mask m (the context for
forecasting, the kept entries for imputation) by the energy of its own Tweedie estimate
x0_hat(x_t) = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t):

* MSE:      E(x_t) = sum m (y - x0_hat)^2                     (a Gaussian observation model)
* quantile: E(x_t) = sum m max(q e, (q - 1) e), e = y - x0_hat  (asymmetric Laplace); the k-th of S samples
  uses q_k = k / (S + 1), so the samples spread over the predictive quantiles.

The gradient flows through eps_theta (autograd). Two samplers:

* DDPM (the reference code's observation_guidance): x_{n-1} = p_sample(x_n), then
  x_{n-1} <- x_{n-1} - s sigma_post(n)^2 grad E(x_{n-1}) with the energy evaluated at time n; 2 NFE per step.
* DDIM (eta = 0): eps' = eps_theta(x_t) + s sqrt(1 - abar_t) grad E(x_t),
  x_{t'} = sqrt(abar_t') x0_hat(eps') + sqrt(1 - abar_t') eps'; 1 NFE per step.

Forecasting and imputation are the same call: only the mask differs.
"""

from __future__ import annotations

import torch

ENERGIES = ("mse", "quantile")
SAMPLERS = ("ddpm", "ddim")


def mse_energy(x0_hat: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, q: torch.Tensor | None = None
               ) -> torch.Tensor:
    """E = sum_j m_j (y_j - x0_hat_j)^2 per example, shape (B,) (TSDiff eq. 8). ``q`` is ignored."""
    del q
    return (mask * (y - x0_hat) ** 2).flatten(1).sum(1)


def quantile_energy(x0_hat: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """E = sum_j m_j max(q e_j, (q - 1) e_j), e = y - x0_hat, per example (B,) with q (B,) (TSDiff eq. 10, the
    pinball loss of quantile level q)."""
    e = y - x0_hat
    q = q.reshape(-1, *([1] * (e.dim() - 1))).to(e.dtype)
    return (mask * torch.maximum(q * e, (q - 1) * e)).flatten(1).sum(1)


def quantile_levels(num_samples: int) -> torch.Tensor:
    """q_k = k / (S + 1) for k = 1..S (TSDiff Sec. 3.1)."""
    return torch.arange(1, num_samples + 1, dtype=torch.float64) / (num_samples + 1)


def _energy_fn(energy: str):
    if energy not in ENERGIES:
        raise ValueError(f"unknown guidance energy {energy!r}; allowed: {', '.join(ENERGIES)}")
    return mse_energy if energy == "mse" else quantile_energy


def tweedie_x0(denoiser, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0_hat = (x - sigma_t eps_theta(x, t)) / alpha_t (differentiable in x)."""
    return denoiser.denoise(x, t)


def energy_grad(denoiser, x: torch.Tensor, t: torch.Tensor, y, mask, q, energy: str) -> tuple[torch.Tensor, ...]:
    """(grad_x E(x0_hat(x, t)), eps_theta(x, t)) with the gradient through the network (autograd)."""
    fn = _energy_fn(energy)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        eps = denoiser.raw(x, t)
        sched = denoiser.schedule
        alpha, sigma = sched.alpha(t).to(x.dtype), sched.sigma(t).to(x.dtype)
        x0_hat = (x - sigma[:, None, None] * eps) / alpha[:, None, None]
        (grad,) = torch.autograd.grad(fn(x0_hat, y, mask, q).sum(), x)
    return grad, eps.detach()


def ddpm_step(sched, x: torch.Tensor, eps: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """One ancestral DDPM step from timestep n (Ho et al. 2020, arXiv 2006.11239, Alg. 2):
    x_{n-1} = mu_post(x_n, x0_hat) + sigma_post(n) z, no noise at n = 0."""
    abar = sched.alphas_cumprod
    beta = float(sched.betas[n])
    a_n = float(abar[n])
    a_prev = float(abar[n - 1]) if n > 0 else 1.0
    x0_hat = (x - (1 - a_n) ** 0.5 * eps) / a_n**0.5
    mean = (beta * a_prev**0.5 / (1 - a_n)) * x0_hat + ((1 - a_prev) * (1 - beta) ** 0.5 / (1 - a_n)) * x
    if n == 0:
        return mean
    var = beta * (1 - a_prev) / (1 - a_n)
    return mean + var**0.5 * torch.randn(x.shape, generator=generator, dtype=x.dtype)


def posterior_variance(sched, n: int) -> float:
    """sigma_post(n)^2 = beta_n (1 - abar_{n-1}) / (1 - abar_n) (0 at n = 0)."""
    if n == 0:
        return 0.0
    abar = sched.alphas_cumprod
    return float(sched.betas[n] * (1 - abar[n - 1]) / (1 - abar[n]))


def sample_self_guided(denoiser, y: torch.Tensor, mask: torch.Tensor, num_samples: int, *, energy: str = "quantile",
                       scale: float = 4.0, sampler: str = "ddpm", steps: int | None = None,
                       generator: torch.Generator, progress: bool = False) -> torch.Tensor:
    """Self-guided samples of an unconditional TSDiff model (see the module docstring).

    y, mask: (B, D, L) scaled observations and 0/1 mask (mask may be (1, D, L)); returns (S, B, D, L).
    Sample k of every series uses quantile level q_k = k/(S + 1) (quantile energy). ``steps``: DDIM steps
    (default T); DDPM always runs all T steps (2T NFE). ``scale`` = s of the updates.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    _energy_fn(energy)
    from tqdm import tqdm

    sched = denoiser.schedule
    big_t = sched.num_train_timesteps
    b = y.shape[0]
    y_rep = y.repeat(num_samples, 1, 1)
    m_rep = mask.expand_as(y).repeat(num_samples, 1, 1)
    q = quantile_levels(num_samples).repeat_interleave(b)  # sample-major, like y_rep
    x = torch.randn(y_rep.shape, generator=generator, dtype=y_rep.dtype)
    if sampler == "ddpm":
        for n in tqdm(list(reversed(range(big_t))), disable=not progress, desc="self-guided DDPM", leave=False):
            t = sched.t_of_timestep(torch.full((x.shape[0],), n)).to(x.dtype)
            with torch.no_grad():
                x = ddpm_step(sched, x, denoiser.raw(x, t), n, generator)
            var = posterior_variance(sched, n)
            if var > 0 and scale != 0:
                grad, _ = energy_grad(denoiser, x, t, y_rep, m_rep, q, energy)
                x = x - scale * var * grad
        return x.reshape(num_samples, b, *y.shape[1:])
    steps = big_t if steps is None else int(steps)
    if not 1 <= steps <= big_t:
        raise ValueError(f"DDIM steps must be in 1..{big_t}; got {steps}")
    grid = torch.linspace(big_t - 1, 0, steps).round().long().tolist()
    abar = sched.alphas_cumprod
    for i, n in enumerate(tqdm(grid, disable=not progress, desc="self-guided DDIM", leave=False)):
        t = sched.t_of_timestep(torch.full((x.shape[0],), n)).to(x.dtype)
        grad, eps = energy_grad(denoiser, x, t, y_rep, m_rep, q, energy)
        a_n = float(abar[n])
        eps = eps + scale * (1 - a_n) ** 0.5 * grad
        x0_hat = (x - (1 - a_n) ** 0.5 * eps) / a_n**0.5
        a_next = float(abar[grid[i + 1]]) if i + 1 < len(grid) else 1.0
        x = (a_next**0.5 * x0_hat + (1 - a_next) ** 0.5 * eps).detach()
    return x.reshape(num_samples, b, *y.shape[1:])


@torch.no_grad()
def sample_unconditional(denoiser, num_samples: int, shape: tuple[int, int], *, steps: int = 50,
                         generator: torch.Generator) -> torch.Tensor:
    """Plain DDIM (eta = 0) samples of the unconditional model, (S, D, L) (Song et al. 2021, arXiv 2010.02502)."""
    sched = denoiser.schedule
    big_t = sched.num_train_timesteps
    grid = torch.linspace(big_t - 1, 0, steps).round().long().tolist()
    abar = sched.alphas_cumprod
    x = torch.randn((num_samples, *shape), generator=generator)
    for i, n in enumerate(grid):
        t = sched.t_of_timestep(torch.full((num_samples,), n)).to(x.dtype)
        eps = denoiser.raw(x, t)
        a_n = float(abar[n])
        x0_hat = (x - (1 - a_n) ** 0.5 * eps) / a_n**0.5
        a_next = float(abar[grid[i + 1]]) if i + 1 < len(grid) else 1.0
        x = a_next**0.5 * x0_hat + (1 - a_next) ** 0.5 * eps
    return x
