"""DPM-Encoder, CycleDiffusion and latent-energy guidance (Wu & De la Torre, ICCV 2023, arXiv 2210.05559).

A stochastic sampler (DDPM, or DDIM with eta > 0) is a deterministic map G from a latent made of all the noise it
draws, z = (x_T, eps_1, ..., eps_n), to an image. On a grid t_0 > ... > t_n, step i (s = t_{i-1} -> t = t_i) of
our DDIM sampler (``samplers.sample_ddim``, any schedule) is

    x_t = alpha_t x0_hat(x_s) + b_i eps_hat(x_s) + c_i eps_i,     eps_hat = (x_s - alpha_s x0_hat)/sigma_s,
    c_i = eta sigma_t sqrt(1 - exp(2 (lam_s - lam_t))),           b_i = sqrt(sigma_t^2 - c_i^2)

(eta = 1 is the DDPM posterior step). The **DPM-Encoder** (paper Sec. 3.1) inverts G for a given image x0:
it draws the intermediate states from the forward process given x0,

    x_{t_0} ~ q(x_{t_0} | x0) = N(alpha_{t_0} x0, sigma_{t_0}^2 I),
    x_t ~ q(x_t | x_s, x0) = N(alpha_t x0 + b_i (x_s - alpha_s x0)/sigma_s, c_i^2 I)    (DDIM's q_sigma, eq. 7),

takes the last state to be x0 itself (the paper's x_0 is the data; its last step needs c_n > 0, so the grid must
end at t_n > 0, e.g. t_min = 1/N on a discrete VP schedule), and solves every step for the noise the *model*
would need, eps_i = (x_t - alpha_t x0_hat(x_s) - b_i eps_hat(x_s)) / c_i. Decoding z with the same model, grid
and eta gives back x0 exactly (to float rounding), whatever the model. On a grid ending at t = 0 the last step is
deterministic (c_n = 0): decoding then returns x0_hat(x_{t_{n-1}}), "x0 up to the last step", as the reference
code does. With the exact denoiser of the data the noises are centred (E[x0 - x0_hat | x_s] = 0) and each has
per-coordinate variance 1 + k_i^2 Var(x0 | x_s)/c_i^2, k_i = alpha_t - b_i alpha_s/sigma_s, which tends to 1 as
the steps shrink.

**CycleDiffusion** (Sec. 4.1): encode x with the source model's DPM-Encoder, decode the same z with the target
model: unpaired translation between two models trained independently on related domains, or zero-shot editing
with one conditional model (encode with class a, decode with class b). The paper encodes from an intermediate
t_0 (850 of 1000), which is a grid starting at t_0 < t_max here.

**Latent-energy guidance** (Sec. 4.3): with G differentiable, sample z from p(z) ∝ N(z; 0, I) exp(-E(G(z)))
for an energy E on images (here: a classifier's -log p(y | x)) by Langevin steps on z,

    z <- z - (delta/2) grad_z [ lam E(G(z)) + ||z||^2 / 2 ] + sqrt(delta) xi,    xi ~ N(0, I)

(``noise_scale = 0``: plain gradient descent on the same objective).

Baselines used by the bench: **SDEdit** (Meng et al. 2022, arXiv 2108.01073): x_{t_0} = alpha x + sigma eps,
then the target model's DDPM sampler from t_0; **DDIM inversion** (Song et al. 2021, arXiv 2010.02502; eta = 0):
run the deterministic DDIM update backwards along the grid with the source model, decode with the target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core import Denoiser, grid_uniform
from ..core.noise import GeneratorArg, randn, randn_like
from ..samplers import sample_ddim
from ..samplers.baseline import ddim_step_coefficients
from ..samplers.registry import grid_steps

__all__ = ["DPMLatent", "ddim_step_coefficients", "dpm_encode", "dpm_decode", "cycle_diffusion", "ddim_invert",
           "ddim_inversion_translate", "sdedit", "latent_energy_guidance", "classifier_energy", "translation_grid",
           "thin_digits", "thick_digits"]


@dataclass
class DPMLatent:
    """The DPM-Encoder's latent z = (x_T, eps_1 .. eps_n) of a DDIM(eta) sampler on grid ``ts``.

    ``x_T``: (B, ...) the start state at ts[0]; ``noises``: (n, B, ...) the noise of each step (zero on a step
    whose noise level c_i is 0); ``ts``: the float64 grid (n + 1,); ``eta``: the sampler's eta.
    """

    x_T: torch.Tensor
    noises: torch.Tensor
    ts: torch.Tensor
    eta: float

    def detach(self) -> DPMLatent:
        """The same latent without autograd history."""
        return DPMLatent(self.x_T.detach(), self.noises.detach(), self.ts, self.eta)


def _check_eta(eta: float) -> float:
    if not eta > 0:
        raise ValueError(f"the DPM-Encoder needs a stochastic sampler, eta > 0; got eta={eta} (for eta = 0 use "
                         "ddim_invert)")
    return float(eta)


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)


def dpm_encode(denoiser: Denoiser, x0: torch.Tensor, ts, *, eta: float = 1.0, cond: dict | None = None,
               generator: GeneratorArg = None, progress: bool = False) -> DPMLatent:
    """DPM-Encoder (arXiv 2210.05559, Sec. 3.1; see the module docstring for the equations).

    x0 (B, ...) images; ts a decreasing grid (``translation_grid``); eta > 0. Returns the latent whose decoding by
    ``dpm_decode(denoiser, z)`` (= ``sample_ddim(denoiser, z.x_T, ts, eta=eta)`` fed these noises) is x0 exactly
    when the grid ends at t > 0. n NFE; the forward-process draws come from ``generator`` (per-sample generators
    give batch-size-independent latents). Differentiable in the denoiser's output; callers choose no_grad.
    """
    eta = _check_eta(eta)
    cond = cond or {}
    sched = denoiser.schedule
    steps = grid_steps(denoiser, x0, ts)
    ts = torch.as_tensor(ts, dtype=torch.float64)
    x = sched.alpha(ts[0]) * x0 + sched.sigma(ts[0]) * randn_like(x0, generator)
    x_T, noises = x, []
    with _bar(len(steps), "DPM-Encoder", progress) as bar:
        for i, s, t in steps:
            a_s, s_s, a_t, b, c = ddim_step_coefficients(sched, s, t, eta)
            if i == len(steps) - 1:
                x_next = x0
            else:  # DDIM's forward posterior q_sigma(x_t | x_s, x0)
                x_next = a_t * x0 + b * (x - a_s * x0) / s_s + c * randn_like(x0, generator)
            x0_hat = denoiser(x, s, **cond)
            model_mean = a_t * x0_hat + b * (x - a_s * x0_hat) / s_s
            if c > 0:
                noises.append((x_next - model_mean) / c)
            else:  # a deterministic step (to t = 0): the model's own mean, no noise to record
                noises.append(torch.zeros_like(x0))
                x_next = model_mean
            x = x_next.to(x0.dtype)
            bar.update(1)
    return DPMLatent(x_T.to(x0.dtype), torch.stack(noises).to(x0.dtype), ts, eta)


def dpm_decode(denoiser: Denoiser, latent: DPMLatent, *, cond: dict | None = None, progress: bool = False,
               callback: Callable | None = None) -> torch.Tensor:
    """G(z): the DDIM(eta) sampler (``samplers.sample_ddim``'s update, same coefficients and order of operations)
    run from z.x_T on z.ts with z.noises as its noise draws. n NFE; differentiable in z and the denoiser."""
    cond = cond or {}
    sched = denoiser.schedule
    x = latent.x_T
    steps = grid_steps(denoiser, x, latent.ts)
    if latent.noises.shape[0] != len(steps) or latent.noises.shape[1:] != x.shape:
        raise ValueError(f"latent noises have shape {tuple(latent.noises.shape)}; the grid has {len(steps)} steps "
                         f"for x of shape {tuple(x.shape)}")
    with _bar(len(steps), "decode", progress) as bar:
        for i, s, t in steps:
            x0_hat = denoiser(x, s, **cond)
            a_s, s_s, a_t, b, c = ddim_step_coefficients(sched, s, t, latent.eta)
            eps_hat = (x - a_s * x0_hat) / s_s
            x = a_t * x0_hat + b * eps_hat
            if c > 0:
                x = x + c * latent.noises[i]
            x = x.to(x0_hat.dtype)
            if callback is not None:
                callback({"i": i, "t": s, "t_next": t, "x": x, "x0_hat": x0_hat})
            bar.update(1)
    return x


def cycle_diffusion(source: Denoiser, target: Denoiser, x: torch.Tensor, ts, *, eta: float = 1.0,
                    source_cond: dict | None = None, target_cond: dict | None = None,
                    generator: GeneratorArg = None, progress: bool = False) -> torch.Tensor:
    """CycleDiffusion (arXiv 2210.05559, Sec. 4.1): y = G_target(Enc_source(x)), the same latent decoded by the
    target model (or by one conditional model under another condition: ``source_cond`` vs ``target_cond``).
    2n NFE. With source == target (and the same condition) on a grid ending at t > 0, y = x exactly."""
    z = dpm_encode(source, x, ts, eta=eta, cond=source_cond, generator=generator, progress=progress)
    return dpm_decode(target, z, cond=target_cond, progress=progress)


def translation_grid(schedule, steps: int, *, t_start: float | None = None, t_end: float | None = None):
    """The grid translations use: ``steps`` uniform steps from ``t_start`` (default t_max; the paper encodes
    from t = 0.85 of the chain) to ``t_end`` (default t_min > 0, so that the DPM-Encoder's last step is
    stochastic and decoding reproduces its input)."""
    return grid_uniform(schedule, steps, t_start=t_start, t_end=t_end)


def ddim_invert(denoiser: Denoiser, x0: torch.Tensor, ts, *, cond: dict | None = None) -> torch.Tensor:
    """Deterministic DDIM inversion (eta = 0; Song et al. 2021, arXiv 2010.02502, Sec. 5.4, encoding by the
    probability-flow ODE run forward): walk the grid backwards, x_s = alpha_s x0_hat(x_t) + sigma_s eps_hat(x_t)
    with the model evaluated at the current (less noisy) point t, starting from x_{t_n} = alpha_{t_n} x0. Returns
    x at ts[0]. n NFE; approximate (the model is evaluated at t, not s), exact only in the small-step limit."""
    cond = cond or {}
    sched = denoiser.schedule
    steps = grid_steps(denoiser, x0, ts)
    x = sched.alpha(steps[-1][2]) * x0
    for _, s, t in reversed(steps):
        if sched.sigma(t) == 0:  # at t = 0 the model sees clean data; x0_hat = x0
            x0_hat, eps_hat = x0, torch.zeros_like(x0)
        else:
            x0_hat = denoiser(x, t, **cond)
            eps_hat = (x - sched.alpha(t) * x0_hat) / sched.sigma(t)
        x = (sched.alpha(s) * x0_hat + sched.sigma(s) * eps_hat).to(x0.dtype)
    return x


def ddim_inversion_translate(source: Denoiser, target: Denoiser, x: torch.Tensor, ts, *,
                             source_cond: dict | None = None, target_cond: dict | None = None) -> torch.Tensor:
    """The deterministic baseline: x_T = DDIM-inversion of x by the source model, decoded by the target model's
    DDIM (eta = 0) on the same grid. 2n NFE."""
    x_T = ddim_invert(source, x, ts, cond=source_cond)
    return sample_ddim(target, x_T, ts, eta=0.0, cond=target_cond)


def sdedit(target: Denoiser, x: torch.Tensor, ts, *, cond: dict | None = None,
           generator: GeneratorArg = None) -> torch.Tensor:
    """SDEdit (Meng et al. 2022, arXiv 2108.01073): perturb x to t_0 = ts[0], x_{t_0} = alpha x + sigma eps, and
    run the target model's stochastic sampler (DDIM eta = 1, the DDPM posterior step) down the grid. n NFE."""
    sched = target.schedule
    t0 = torch.as_tensor(ts, dtype=torch.float64)[0]
    x_t0 = sched.alpha(t0) * x + sched.sigma(t0) * randn_like(x, generator)
    return sample_ddim(target, x_t0.to(x.dtype), ts, eta=1.0, cond=cond, generator=generator)


def classifier_energy(classifier: torch.nn.Module, labels: torch.Tensor) -> Callable:
    """E(x) = -log p_clf(y | x) per sample (B,): the energy of latent-energy guidance toward classes ``labels``."""

    def energy(x: torch.Tensor) -> torch.Tensor:
        logits = classifier(x.to(torch.float32).clamp(-1, 1))
        return F.cross_entropy(logits, labels.to(logits.device), reduction="none")

    return energy


def latent_energy_guidance(denoiser: Denoiser, latent: DPMLatent, energy: Callable, *, steps: int = 10,
                           step_size: float = 0.05, weight: float = 1.0, noise_scale: float = 1.0,
                           cond: dict | None = None, generator: torch.Generator | None = None,
                           progress: bool = False) -> tuple[DPMLatent, list[float]]:
    """Plug-and-play guidance on the unified latent (arXiv 2210.05559, Sec. 4.3): Langevin dynamics on
    p(z) ∝ N(z; 0, I) exp(-weight * E(G(z))), starting from ``latent``,

        z <- z - (step_size/2) grad_z [weight E(G(z)) + ||z||^2/2] + noise_scale sqrt(step_size) xi,

    G = ``dpm_decode`` (differentiated through the sampler). ``energy(x) -> (B,)``. Returns the final latent and
    the mean energy before each step and after the last (steps + 1 values). n NFE forward + backward per step.
    ``generator``: one torch.Generator (or None) for the Langevin noise.
    """
    if steps < 0 or step_size <= 0 or noise_scale < 0:
        raise ValueError("need steps >= 0, step_size > 0 and noise_scale >= 0")
    z_T = latent.x_T.detach().clone().requires_grad_(True)
    z_n = latent.noises.detach().clone().requires_grad_(True)
    nonzero = (latent.noises != 0).flatten(1).any(1)  # deterministic steps carry no noise: keep them at 0
    mask = nonzero.reshape(-1, *([1] * (latent.noises.dim() - 1))).to(z_n.dtype)
    history = []
    with _bar(steps, "latent guidance", progress) as bar:
        for k in range(steps + 1):
            x = dpm_decode(denoiser, DPMLatent(z_T, z_n * mask, latent.ts, latent.eta), cond=cond)
            e = energy(x)
            history.append(float(e.detach().mean()))
            if k == steps:
                break
            prior = 0.5 * (z_T.square().flatten(1).sum(1) + (z_n * mask).square().transpose(0, 1).flatten(1).sum(1))
            g_T, g_n = torch.autograd.grad((weight * e + prior).sum(), (z_T, z_n))
            with torch.no_grad():
                z_T -= 0.5 * step_size * g_T
                z_n -= 0.5 * step_size * g_n
                if noise_scale > 0:
                    z_T += noise_scale * step_size**0.5 * randn(z_T.shape, generator, dtype=z_T.dtype)
                    z_n += noise_scale * step_size**0.5 * randn(z_n.shape, generator, dtype=z_n.dtype)
            bar.update(1)
    return DPMLatent(z_T.detach(), (z_n * mask).detach(), latent.ts, latent.eta), history


# --- digit domains: stroke thickness by grey morphology at 2x resolution --------------------------------------

def _morph(x: torch.Tensor, dilate: bool, radius: int) -> torch.Tensor:
    """Grey dilation (max filter) or erosion (min filter) of (B, C, H, W) images in [-1, 1], computed at twice
    the resolution (bilinear up, (2 radius + 1)^2 filter, 2x2 average down) so that 8 x 8 strokes change by
    about half a pixel per radius step instead of a whole one."""
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    k = 2 * radius + 1
    out = F.max_pool2d(up, k, stride=1, padding=radius) if dilate else -F.max_pool2d(-up, k, stride=1, padding=radius)
    return F.avg_pool2d(out, 2).clamp(-1, 1)


def thin_digits(x: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """The "thin" domain: grey erosion of the digits (ink is high values, background -1) at 2x resolution."""
    return _morph(x, False, radius)


def thick_digits(x: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """The "thick" domain: grey dilation of the digits at 2x resolution."""
    return _morph(x, True, radius)
