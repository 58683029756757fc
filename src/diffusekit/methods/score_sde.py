"""Score-based generative models: NCSN (noise-conditional score networks, annealed Langevin) and the score-SDE
framework (VE, VP, sub-VP SDEs with predictor-corrector sampling).

Papers: Song & Ermon 2019 (NCSN, arXiv 1907.05600); Song & Ermon 2020 (NCSNv2, arXiv 2006.09011); Song, Sohl-Dickstein,
Kingma, Kumar, Ermon & Poole 2021 (score SDEs, arXiv 2011.13456).

A score is one conversion away from our Denoiser (Tweedie's formula for x_t = alpha x0 + sigma eps):

    s(x, t) = grad_x log p_t(x) = (alpha_t x0_hat(x, t) - x) / sigma_t^2,   x0_hat = (x + sigma^2 s) / alpha,

so every Denoiser (trained nets, ``core.gmm.GMMDenoiser``) is a score model and every score model a Denoiser
(``score``, ``denoiser_from_score``). The three SDEs are schedules: VE = ``core.VESchedule`` (alpha = 1, sigma = t),
VP = ``core.VPLinear``, sub-VP = ``core.SubVPSchedule``; every sampler runs on each, and the generic reverse SDE of
a schedule (f = d log alpha/dt, g^2 = d sigma^2/dt - 2 f sigma^2) is the paper's SDE for each of them. The samplers
live in ``samplers.predictor_corrector`` (``pc``, ``ncsn_langevin``); NCSN's training loss is ``NCSNLoss``.
"""

from __future__ import annotations

import math

import torch

from ..core._tensor import as_time, per_sample
from ..core.denoiser import Denoiser, FunctionDenoiser, NetworkDenoiser
from ..core.predictions import convert
from ..core.schedules import Schedule, SubVPSchedule, VESchedule
from ..samplers.predictor_corrector import (langevin_corrector, ncsnv2_step_ratio, reverse_diffusion_step,
                                            sample_annealed_langevin, sample_pc, score_from_x0, snr_step_size)
from ..training.losses import DiffusionLoss


# ------------------------------------------------------------------------------------------------
# Scores <-> denoisers
# ------------------------------------------------------------------------------------------------
def score(denoiser: Denoiser, x: torch.Tensor, t, **cond) -> torch.Tensor:
    """s(x, t) = (alpha_t x0_hat(x, t) - x) / sigma_t^2 from one denoiser call (Song et al. 2021, arXiv 2011.13456;
    Tweedie's formula). x: (B, ...); t: a scalar or (B,) schedule time with sigma_t > 0."""
    t = as_time(t, batch=x.shape[0], device=x.device)
    return convert(denoiser.denoise(x, t, **cond), x, t, denoiser.schedule, "x0", "score")


def denoiser_from_score(score_fn, schedule: Schedule) -> Denoiser:
    """The Denoiser x0_hat = (x + sigma_t^2 s(x, t)) / alpha_t of a score function ``score_fn(x, t) -> s`` (t float64
    of shape (B,)), the inverse of ``score`` (arXiv 2011.13456). Undefined where alpha_t = 0."""

    def fn(x, t, **cond):
        return convert(score_fn(x, t, **cond), x, t, schedule, "score", "x0")

    return FunctionDenoiser(fn, schedule)


# ------------------------------------------------------------------------------------------------
# NCSN: the noise ladder and the loss
# ------------------------------------------------------------------------------------------------
def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> torch.Tensor:
    """NCSN's noise levels sigma_1 > ... > sigma_L, a geometric sequence from sigma_max to sigma_min (float64, (L,));
    Song & Ermon 2019 (arXiv 1907.05600, §4.2) use sigma 1 -> 0.01 with L = 10; NCSNv2 (arXiv 2006.09011, Technique 1,
    2) picks sigma_1 as the largest pairwise data distance and L from the ratio gamma. It is the logSNR grid of
    ``VESchedule(sigma_min, sigma_max)`` with L - 1 steps."""
    if not 0 < sigma_min < sigma_max or int(num_levels) < 2:
        raise ValueError(f"need 0 < sigma_min < sigma_max and num_levels >= 2; got {sigma_min}, {sigma_max}, "
                         f"{num_levels}")
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), int(num_levels), dtype=torch.float64))


class NCSNLoss(DiffusionLoss):
    """Noise-conditional denoising score matching (Song & Ermon 2019, arXiv 1907.05600, eq. 5-6) with
    lambda(sigma) = sigma^2, sigma drawn uniformly from the ladder ``sigmas``:

        l_i = sigma^2 / D ||s_theta(x~, sigma) + (x~ - x) / sigma^2||^2 = 1/D ||sigma s_theta + z||^2,
        x~ = x + sigma z,

    (the paper's 1/2 sum over dimensions, divided by D/2 so the scale matches ``DiffusionLoss``). With the network
    reading as s_theta = -eps_theta / sigma (NCSNv2's Technique 3, s_theta(x, sigma) = s(x)/sigma, up to the sign),
    this is exactly ``DiffusionLoss(VESchedule(sigma_L, sigma_1), "eps", weighting="uniform")`` except for the noise
    level's distribution (uniform over the L levels instead of uniform in sigma): ``tests/test_score_sde.py`` checks
    the equality per example. Trainer-compatible: ``loss(net, batch, generator) -> Tensor[B]``.
    """

    def __init__(self, sigmas, *, sigma_data: float = 0.5, scale_input: bool | None = None):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
        if sigmas.numel() < 2 or bool((sigmas <= 0).any()) or bool((sigmas[1:] >= sigmas[:-1]).any()):
            raise ValueError("sigmas must be at least 2 positive, strictly decreasing noise levels")
        super().__init__(VESchedule(float(sigmas[-1]), float(sigmas[0])), "eps", weighting="uniform",
                         sigma_data=sigma_data, scale_input=scale_input)
        self.sigmas = sigmas

    def config(self) -> dict:
        return {**super().config(), "loss": "ncsn", "sigmas": self.sigmas.tolist()}

    def __call__(self, net: torch.nn.Module, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x0 = batch[0]
        cond = {"class_labels": batch[1]} if len(batch) > 1 else {}
        idx = torch.randint(0, self.sigmas.numel(), (x0.shape[0],), generator=generator)
        sigma = self.sigmas[idx].to(x0.device)
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x_noisy = x0 + per_sample(sigma, x0) * z
        eps_hat = self.denoiser(net).raw(x_noisy, sigma, **cond)
        return ((eps_hat - z) ** 2).flatten(1).mean(1)


def ncsn_denoiser(net: torch.nn.Module, sigmas, *, sigma_data: float = 0.5) -> NetworkDenoiser:
    """The Denoiser of a net trained by ``NCSNLoss(sigmas)`` (on ``VESchedule(sigma_L, sigma_1)``)."""
    return NCSNLoss(sigmas, sigma_data=sigma_data).denoiser(net)


__all__ = ["NCSNLoss", "SubVPSchedule", "denoiser_from_score", "geometric_sigmas", "langevin_corrector",
           "ncsn_denoiser", "ncsnv2_step_ratio", "reverse_diffusion_step", "sample_annealed_langevin", "sample_pc",
           "score", "score_from_x0", "snr_step_size"]
