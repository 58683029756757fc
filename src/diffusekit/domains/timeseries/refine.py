"""TSDiff refinement of a base forecaster's predictions (Kollovieh et al., NeurIPS 2023, arXiv 2307.11494, Sec. 3.2).

The unconditional model defines an energy over whole windows y (context + prediction),

    E(y) = ||eps_theta(sqrt(abar_tau) y + sqrt(1 - abar_tau) eps, tau) - eps||^2 + lambda sum m (y - y_obs)^2,

with tau a fixed diffusion step (default 20 of T = 100), a fresh eps ~ N(0, I) at every iteration and the prior
term a masked MSE on the observed context (the reference's ``prior`` option). The base forecast initialises
the prediction window; then

* ML (maximum likelihood): gradient steps y <- y - eta grad E (SGD, ``lr`` eta);
* Langevin (overdamped): y <- y - eta grad E + sqrt(2 eta) gamma z, z ~ N(0, I), gamma = 0.1 as in the paper's
  code (a tempered posterior sample).

Each iteration costs one forward and one backward pass of the network.
"""

from __future__ import annotations

import torch

METHODS = ("ml", "langevin")


def refinement_energy(denoiser, y: torch.Tensor, y_obs: torch.Tensor, mask: torch.Tensor, *, tau: int,
                      prior_scale: float, generator: torch.Generator) -> torch.Tensor:
    """E(y) per window (B,) as in the module docstring (eps drawn from ``generator``)."""
    sched = denoiser.schedule
    a = float(sched.alphas_cumprod[tau])
    eps = torch.randn(y.shape, generator=generator, dtype=y.dtype)
    t = sched.t_of_timestep(torch.full((y.shape[0],), tau)).to(y.dtype)
    diff = denoiser.raw(a**0.5 * y + (1 - a) ** 0.5 * eps, t) - eps
    return (diff**2).flatten(1).sum(1) + prior_scale * (mask * (y - y_obs) ** 2).flatten(1).sum(1)


def refine(denoiser, y_init: torch.Tensor, y_obs: torch.Tensor, mask: torch.Tensor, *, method: str = "ml",
           iterations: int = 20, lr: float = 0.1, tau: int = 20, prior_scale: float = 1.0, noise: float = 0.1,
           generator: torch.Generator) -> list[torch.Tensor]:
    """Refine windows ``y_init`` (B, D, L) (context + base forecast, scaled) under the energy above.

    Returns the trajectory [y_0 = y_init, y_1, ..., y_iterations] (each (B, D, L), detached). ``method``: "ml"
    (gradient descent) or "langevin" (overdamped Langevin with noise std sqrt(2 lr) ``noise``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown refinement method {method!r}; allowed: {', '.join(METHODS)}")
    if not 0 <= tau < denoiser.schedule.num_train_timesteps:
        raise ValueError(f"tau must be in 0..{denoiser.schedule.num_train_timesteps - 1}; got {tau}")
    y = y_init.detach().clone()
    trajectory = [y.clone()]
    for _ in range(int(iterations)):
        with torch.enable_grad():
            y.requires_grad_(True)
            energy = refinement_energy(denoiser, y, y_obs, mask, tau=tau, prior_scale=prior_scale,
                                       generator=generator)
            (grad,) = torch.autograd.grad(energy.sum(), y)
        y = y.detach() - lr * grad
        if method == "langevin":
            y = y + (2 * lr) ** 0.5 * noise * torch.randn(y.shape, generator=generator, dtype=y.dtype)
        trajectory.append(y.clone())
    return trajectory
