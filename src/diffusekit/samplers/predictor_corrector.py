"""Score-based samplers: predictor-corrector (Song et al. 2021) and annealed Langevin dynamics (NCSN).

Both read the score from any Denoiser with one conversion, s(x, t) = grad log p_t(x) = (alpha x0_hat - x)/sigma^2
(Tweedie's formula), so they run on every schedule (VE, VP, sub-VP, flow) and any grid ``ts``.

* ``sample_pc`` (registered ``pc``): Song et al. 2021 (arXiv 2011.13456), Alg. 1-3. Each step s -> t of the grid
  first runs ``n_corrector`` Langevin corrector steps at s (Alg. 4), then one predictor step s -> t:
  ``reverse_diffusion`` (the reverse of the forward transition q(x_s | x_t), eq. 46) or ``euler_maruyama``
  (``sample_euler_maruyama``, eq. 6). This is the order of the authors' code (``pc_sampler``: corrector, then
  predictor, at each time); the last predictor step drops its noise (their ``denoise=True``). NFE: 1 + n_corrector
  per step.
* ``sample_annealed_langevin`` (registered ``ncsn_langevin``, a name that sorts after ``ddpm`` in the registry
  listing): NCSN, Song & Ermon 2019 (arXiv 1907.05600), Alg. 1, with the step rule alpha_i = eps sigma_i^2 /
  sigma_L^2, T steps per noise level, and NCSNv2's final denoising step (Song & Ermon 2020, arXiv 2006.09011,
  App. C.2) when the grid ends at t = 0. NFE: T per level (+1).

Langevin corrector, signal-to-noise rule (Song et al. 2021, Alg. 4): per sample,

    z ~ N(0, I),   g = s(x, t),   eps = 2 (r ||z|| / ||g||)^2,   x <- x + eps g + sqrt(2 eps) z,

so the ratio of the drift's norm to the noise's norm is r. Alg. 5 (VP) multiplies eps by alpha_i = 1 - beta_i of the
1000-step DDPM chain, within 2% of 1 at every step; it is omitted here. Unlike the authors' code, which averages the
two norms over the batch, the norms are per sample, as in the algorithm, so a sample does not depend on its batch.
All noise comes from ``randn_like(x, generator)``; nothing disables gradients; ``callback`` receives
``{"i", "t", "t_next", "x", "x0_hat"}`` after each step.
"""

from __future__ import annotations

import math

import torch

from ..core._tensor import per_sample
from ..core.denoiser import Denoiser
from ..core.grids import check_grid
from ..core.noise import GeneratorArg, randn_like
from .baseline import sample_euler_maruyama
from .registry import grid_shape, grid_steps, register_sampler

PREDICTORS = ("reverse_diffusion", "euler_maruyama")


def score_from_x0(x0_hat: torch.Tensor, x: torch.Tensor, t, schedule) -> torch.Tensor:
    """s(x, t) = (alpha_t x0_hat - x) / sigma_t^2 (Tweedie's formula; Song et al. 2021, arXiv 2011.13456)."""
    return (per_sample(schedule.alpha(t), x) * x0_hat - x) / per_sample(schedule.sigma(t) ** 2, x)


def snr_step_size(score: torch.Tensor, noise: torch.Tensor, snr: float, *, norms: str = "batch") -> torch.Tensor:
    """Langevin step eps = 2 (r ||z|| / ||g||)^2 (Song et al. 2021, arXiv 2011.13456, Alg. 4), shape (B,).

    ``norms="batch"``: ||z|| and ||g|| are each averaged over the batch (the authors' code), one eps for the batch;
    ``"sample"``: each sample's own norms, so a sample does not depend on its batch. A zero score norm gives eps = 0
    (no step) instead of an infinite one.
    """
    if norms not in ("batch", "sample"):
        raise ValueError(f"unknown snr norms {norms!r}; allowed: batch, sample")
    g_norm = score.flatten(1).norm(dim=1).to(torch.float64)
    z_norm = noise.flatten(1).norm(dim=1).to(torch.float64)
    if norms == "batch":
        g_norm, z_norm = g_norm.mean().expand_as(g_norm), z_norm.mean().expand_as(z_norm)
    eps = 2 * (snr * z_norm / torch.where(g_norm > 0, g_norm, torch.ones_like(g_norm))) ** 2
    return torch.where(g_norm > 0, eps, torch.zeros_like(eps))


def langevin_corrector(denoiser: Denoiser, x: torch.Tensor, t, *, n_steps: int, snr: float, cond: dict,
                       generator: GeneratorArg = None, snr_norms: str = "batch") -> torch.Tensor:
    """``n_steps`` Langevin corrector steps at time t with the signal-to-noise rule (Alg. 4 of arXiv 2011.13456):
    x <- x + eps s(x, t) + sqrt(2 eps) z, eps = 2 (r ||z|| / ||s||)^2 per sample. n_steps NFE."""
    sched = denoiser.schedule
    for _ in range(n_steps):
        x0 = denoiser(x, t, **cond)
        g = score_from_x0(x0, x, t, sched)
        z = randn_like(x, generator)
        eps = per_sample(snr_step_size(g, z, snr, norms=snr_norms), x)
        x = (x + eps * g + torch.sqrt(2 * eps) * z).to(x0.dtype)
    return x


def reverse_diffusion_step(denoiser: Denoiser, x: torch.Tensor, s, t, *, cond: dict, generator: GeneratorArg = None,
                           add_noise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The reverse-diffusion predictor s -> t (Song et al. 2021, arXiv 2011.13456, eq. 46 and App. E), for the forward
    transition x_s = a x_t + G z with a = alpha_s/alpha_t and G^2 = sigma_s^2 - a^2 sigma_t^2:

        x_t = x_s - (a - 1) x_s + G^2 s(x_s, s) + G z.

    VE: a = 1, G^2 = sigma_s^2 - sigma_t^2 (Alg. 2); the DDPM chain: a = sqrt(1 - beta), G^2 = beta (Alg. 3); the
    sub-VP SDE: its exact transition (the authors discretise it by Euler instead; they agree to first order). From
    alpha_s = 0 (a flow or zero-terminal-SNR start) a is 0 and the step is the exact reverse-SDE solution with x0_hat
    held fixed, x_t = alpha_t x0_hat + sigma_t z (as ``sample_euler_maruyama``). ``add_noise=False`` gives the mean
    (the authors' last step). 1 NFE. Returns (x_t, x0_hat)."""
    sched = denoiser.schedule
    x0 = denoiser(x, s, **cond)
    a_s, a_t, s_s, s_t = sched.alpha(s), sched.alpha(t), sched.sigma(s), sched.sigma(t)
    if a_s == 0:
        mean, var = a_t * x0, s_t**2
    else:
        a = a_s / a_t
        var = torch.clamp(s_s**2 - a**2 * s_t**2, min=0)
        mean = (2 - a) * x + var * score_from_x0(x0, x, s, sched)
    if add_noise and var > 0:
        mean = mean + torch.sqrt(var) * randn_like(x, generator)
    return mean.to(x0.dtype), x0


@register_sampler("pc", order=0, nfe_per_step=2, stochastic=True)
def sample_pc(denoiser: Denoiser, x: torch.Tensor, ts, *, predictor: str = "reverse_diffusion", n_corrector: int = 1,
              snr: float = 0.16, snr_norms: str = "batch", cond: dict | None = None, generator: GeneratorArg = None,
              callback=None) -> torch.Tensor:
    """Predictor-corrector sampling (Song et al. 2021, arXiv 2011.13456, Alg. 1; Alg. 2 VE, Alg. 3 VP).

    For each step s -> t of ``ts``: ``n_corrector`` Langevin steps at s with the signal-to-noise rule
    eps = 2 (r ||z|| / ||s(x, s)||)^2, r = ``snr`` (Alg. 4; the paper uses r = 0.16 for VE on CIFAR-10), then one
    ``predictor`` step s -> t (``reverse_diffusion``: ``reverse_diffusion_step``; ``euler_maruyama``: one step of
    ``sample_euler_maruyama``). The last predictor step drops its noise. ``n_corrector=0`` is the predictor alone.

    x: (B, ...) at ts[0]; ts: decreasing schedule times. Order 0 (stochastic); NFE (1 + n_corrector) per step.
    """
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; allowed: {', '.join(PREDICTORS)}")
    if int(n_corrector) != n_corrector or n_corrector < 0:
        raise ValueError(f"n_corrector must be an integer >= 0; got {n_corrector}")
    if not (math.isfinite(snr) and snr > 0):
        raise ValueError(f"snr must be a positive number; got {snr}")
    cond = cond or {}
    steps = grid_steps(denoiser, x, ts)
    for i, s, t in steps:
        last = i == len(steps) - 1
        x = langevin_corrector(denoiser, x, s, n_steps=int(n_corrector), snr=snr, cond=cond, generator=generator,
                               snr_norms=snr_norms)
        if predictor == "reverse_diffusion":
            x, x0 = reverse_diffusion_step(denoiser, x, s, t, cond=cond, generator=generator, add_noise=not last)
        else:
            seen = []
            x = sample_euler_maruyama(denoiser, x, torch.stack([s, t]), cond=cond, generator=generator,
                                      callback=seen.append, final_denoise=last)
            x0 = seen[0]["x0_hat"]
        if callback is not None:
            callback({"i": i, "t": s, "t_next": t, "x": x, "x0_hat": x0})
    return x


def ncsnv2_variance_ratio(step_ratio: float, gamma: float, n_steps_each: int) -> float:
    """s_T^2 / sigma_i^2 after T Langevin steps at level sigma_i from N(0, sigma_{i-1}^2 I), for data at one point
    (Song & Ermon 2020, arXiv 2006.09011, Prop. 3), with step_ratio = eps / sigma_L^2 and gamma = sigma_{i-1}/sigma_i:

        (1 - d)^{2T} (gamma^2 - 2d / (1 - (1 - d)^2)) + 2d / (1 - (1 - d)^2),   d = step_ratio.
    """
    d, T = float(step_ratio), int(n_steps_each)
    stationary = 2 * d / (1 - (1 - d) ** 2)
    return (1 - d) ** (2 * T) * (gamma**2 - stationary) + stationary


def ncsnv2_step_ratio(gamma: float, n_steps_each: int) -> float:
    """NCSNv2's Technique 4 (arXiv 2006.09011, §3.4): the step ratio d = eps/sigma_L^2 in (0, 1) that brings
    ``ncsnv2_variance_ratio`` closest to 1 for T = ``n_steps_each`` steps per level and level ratio gamma >= 1
    (searched on a fine log grid, then refined)."""
    if not gamma >= 1 or int(n_steps_each) < 1:
        raise ValueError(f"need gamma >= 1 and n_steps_each >= 1; got {gamma}, {n_steps_each}")
    grid = torch.logspace(-6, math.log10(0.999), 2000, dtype=torch.float64).tolist()
    best = min(grid, key=lambda d: abs(ncsnv2_variance_ratio(d, gamma, n_steps_each) - 1))
    lo, hi = best / 1.01, min(best * 1.01, 0.9999)
    fine = torch.linspace(lo, hi, 2001, dtype=torch.float64).tolist()
    return min(fine, key=lambda d: abs(ncsnv2_variance_ratio(d, gamma, n_steps_each) - 1))


def _annealed_langevin_nfe(ts, n_steps_each: int = 10) -> int:
    """T per noise level (every grid time with sigma > 0), +1 for the denoising step of a grid ending at t = 0."""
    n, to_zero = grid_shape(ts)
    return n_steps_each * (n if to_zero else n + 1) + int(to_zero)


@register_sampler("ncsn_langevin", order=0, nfe_per_step=10, stochastic=True, nfe=_annealed_langevin_nfe)
def sample_annealed_langevin(denoiser: Denoiser, x: torch.Tensor, ts, *, n_steps_each: int = 10,
                             step_lr: float | None = None, cond: dict | None = None, generator: GeneratorArg = None,
                             callback=None) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, arXiv 1907.05600, Alg. 1, in the authors' code's form):

        for each level sigma_1 > ... > sigma_L:  alpha_i = eps sigma_i^2 / sigma_L^2
            repeat T times:  x <- x + alpha_i s(x, sigma_i) + sqrt(2 alpha_i) z

    (Alg. 1 writes alpha_i/2 and sqrt(alpha_i): the same update with eps doubled). The levels are the grid's times
    with sigma > 0; for VE sigma_i = t_i (NCSN's geometric ladder is ``make_grid("logsnr", VESchedule(...), L - 1)``).
    Other schedules run the same algorithm on the VE-equivalent variable x~ = x/alpha, sigma~ = sigma/alpha: the step
    alpha_i = eps sigma_i^2/sigma_L^2 in x is eps' sigma~_i^2/sigma~_L^2 in x~, and the sample is carried to the next
    level by x <- (alpha_{i+1}/alpha_i) x (x~ unchanged; from a level at alpha = 0, pure noise, by sigma_{i+1}/sigma_i).
    A grid ending at t = 0 ends with NCSNv2's denoising step
    x <- x0_hat(x, sigma_L) (= x + sigma_L^2 s(x, sigma_L) for VE; Song & Ermon 2020, arXiv 2006.09011, App. C.2).

    ``step_lr`` is eps; None picks eps = d sigma_L^2 with d from ``ncsnv2_step_ratio`` (NCSNv2 Technique 4) for the
    ladder's geometric-mean ratio gamma = (sigma~_1/sigma~_L)^(1/(L-1)) of the VE-equivalent levels
    sigma~ = sigma/alpha (= sigma for VE; levels at alpha = 0 left out). That default depends on the whole grid, so
    to continue a chain on part of its ladder (DPM-OT's last steps) pass the chain's eps explicitly.
    NFE: T per level, +1 for the denoising step.
    """
    if int(n_steps_each) != n_steps_each or n_steps_each < 1:
        raise ValueError(f"n_steps_each must be an integer >= 1; got {n_steps_each}")
    if step_lr is not None and not (math.isfinite(step_lr) and step_lr > 0):
        raise ValueError(f"step_lr must be a positive number or None; got {step_lr}")
    cond = cond or {}
    sched = denoiser.schedule
    ts = check_grid(ts, sched).to(x.device)
    to_zero = float(ts[-1]) == 0.0
    levels = ts[:-1] if to_zero else ts  # every time with sigma > 0
    sigmas = sched.sigma(levels)
    sigma_last = float(sigmas[-1])
    if step_lr is None:
        finite = sched.sigma_tilde(levels)
        finite = finite[torch.isfinite(finite)]  # a start at alpha = 0 has sigma~ = inf
        gamma = (float(finite[0] / finite[-1])) ** (1 / (len(finite) - 1)) if len(finite) > 1 else 1.0
        step_lr = ncsnv2_step_ratio(max(gamma, 1.0), int(n_steps_each)) * sigma_last**2
    x0 = None
    alphas = sched.alpha(levels)
    for i, level in enumerate(levels):
        if i > 0:  # carry the sample to the next level's scale: x/alpha is kept (nothing moves on VE)
            scale = alphas[i] / alphas[i - 1] if alphas[i - 1] > 0 else sigmas[i] / sigmas[i - 1]
            x = (x * scale).to(x.dtype)
        step = step_lr * float(sigmas[i]) ** 2 / sigma_last**2
        for _ in range(int(n_steps_each)):
            x0 = denoiser(x, level, **cond)
            x = (x + step * score_from_x0(x0, x, level, sched) + math.sqrt(2 * step) * randn_like(x, generator))
            x = x.to(x0.dtype)
        if to_zero and i == len(levels) - 1:
            x0 = denoiser(x, level, **cond)
            x = x0
        if callback is not None:
            t_next = ts[i + 1] if i + 1 < len(ts) else level
            callback({"i": i, "t": level, "t_next": t_next, "x": x, "x0_hat": x0})
    return x


__all__ = ["PREDICTORS", "langevin_corrector", "ncsnv2_step_ratio", "ncsnv2_variance_ratio",
           "reverse_diffusion_step", "sample_annealed_langevin", "sample_pc", "score_from_x0", "snr_step_size"]
