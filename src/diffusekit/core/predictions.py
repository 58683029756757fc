"""One place for converting between what a network predicts and the denoised estimate x0_hat.

With x_t = alpha x0 + sigma eps (alpha, sigma, alpha' = d alpha/dt, sigma' = d sigma/dt at time t):

    eps        (Ho et al. 2020)          x0 = (x - sigma eps) / alpha
    x0         ("sample")                x0 = x0
    v          (Salimans & Ho 2022,      v = alpha eps - sigma x0   =>  x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)
                arXiv 2202.00512)
    score      (Song et al. 2021)        s = grad log p_t(x) = -eps / sigma   =>  eps = -sigma s
    velocity   (flow matching)           u = dx_t/dt = alpha' x0 + sigma' eps
                                         =>  x0 = (sigma' x - sigma u) / (alpha sigma' - sigma alpha')
    edm        (Karras et al. 2022,      x0 = c_skip x~ + c_out F, on x~ = x/alpha, s = sigma/alpha:
                arXiv 2206.00364 Tab. 1) c_skip = sd^2/(s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2)

and the reverse maps give the training target for each type. ``x0_loss_weight`` gives the factor by
which a squared error in the target space equals a squared error in x0 space, so weightings such as
min-SNR-gamma can be stated once, in x0 space, for every prediction type.
"""

from __future__ import annotations

import torch

from ._tensor import as_time, per_sample
from .schedules import Schedule

PREDICTION_TYPES = ("eps", "x0", "v", "score", "velocity", "edm")
ALPHA_DIVIDING = ("eps", "score", "edm")  # x0_hat divides by alpha: undefined where alpha = 0 (pure noise)


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {prediction!r}; allowed: {', '.join(PREDICTION_TYPES)}")
    return prediction


def _coeffs(schedule: Schedule, t, x: torch.Tensor):
    t = as_time(t, device=x.device)
    return t, per_sample(schedule.alpha(t), x), per_sample(schedule.sigma(t), x)


def _edm_coeffs(alpha, sigma, sigma_data):
    s = sigma / alpha
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    c_out = s * sigma_data / torch.sqrt(s**2 + sigma_data**2)
    return c_skip, c_out


def x0_from_prediction(pred: torch.Tensor, x: torch.Tensor, t, schedule: Schedule, prediction: str, *,
                       sigma_data: float = 0.5) -> torch.Tensor:
    """x0_hat from a network output of the given prediction type at (x, t)."""
    check_prediction(prediction)
    t, alpha, sigma = _coeffs(schedule, t, x)
    if prediction == "x0":
        return pred
    if prediction in ALPHA_DIVIDING and bool((alpha == 0).any()):
        raise ValueError(f"a {prediction}-prediction model cannot denoise at alpha = 0 (x0 = (x - sigma eps)/alpha); "
                         "start the grid below t_max, or use a v, velocity or x0 prediction model")
    if prediction == "eps":
        return (x - sigma * pred) / alpha
    if prediction == "score":
        return (x + sigma**2 * pred) / alpha
    if prediction == "v":
        return (alpha * x - sigma * pred) / (alpha**2 + sigma**2)
    if prediction == "velocity":
        d_alpha, d_sigma = per_sample(schedule.d_alpha(t), x), per_sample(schedule.d_sigma(t), x)
        return (d_sigma * x - sigma * pred) / (alpha * d_sigma - sigma * d_alpha)
    c_skip, c_out = _edm_coeffs(alpha, sigma, sigma_data)
    return c_skip * x / alpha + c_out * pred


def prediction_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, t, schedule: Schedule, prediction: str, *,
                           sigma_data: float = 0.5) -> torch.Tensor:
    """The value a perfect network of the given type outputs for the pair (x0, eps) at time t
    (the training target)."""
    check_prediction(prediction)
    t, alpha, sigma = _coeffs(schedule, t, x0)
    if prediction == "x0":
        return x0
    if prediction == "eps":
        return eps
    if prediction == "score":
        return -eps / sigma
    if prediction == "v":
        return alpha * eps - sigma * x0
    if prediction == "velocity":
        return per_sample(schedule.d_alpha(t), x0) * x0 + per_sample(schedule.d_sigma(t), x0) * eps
    c_skip, c_out = _edm_coeffs(alpha, sigma, sigma_data)
    x_tilde = x0 + (sigma / alpha) * eps
    return (x0 - c_skip * x_tilde) / c_out


def eps_from_x0(x0: torch.Tensor, x: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
    """eps_hat = (x - alpha x0_hat) / sigma."""
    _, alpha, sigma = _coeffs(schedule, t, x)
    return (x - alpha * x0) / sigma


def convert(pred: torch.Tensor, x: torch.Tensor, t, schedule: Schedule, source: str, target: str, *,
            sigma_data: float = 0.5) -> torch.Tensor:
    """Convert a prediction of type ``source`` at (x, t) to type ``target``."""
    x0 = x0_from_prediction(pred, x, t, schedule, source, sigma_data=sigma_data)
    if target == "x0":
        return x0
    return prediction_from_x0_eps(x0, eps_from_x0(x0, x, t, schedule), t, schedule, target, sigma_data=sigma_data)


def x0_loss_weight(t, schedule: Schedule, prediction: str, *, sigma_data: float = 0.5) -> torch.Tensor:
    """w(t) with ||pred - target||^2 = w(t) ||x0_hat - x0||^2 for the given prediction type (float64, like t).

    eps: SNR; v: (alpha^2 + sigma^2)^2 / sigma^2; score: alpha^2 / sigma^4; velocity:
    (alpha sigma' - sigma alpha')^2 / sigma^2; x0: 1; edm: 1 / c_out^2.
    """
    check_prediction(prediction)
    t = as_time(t)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    if prediction == "x0":
        return torch.ones_like(t)
    if prediction == "eps":
        return (alpha / sigma) ** 2
    if prediction == "score":
        return alpha**2 / sigma**4
    if prediction == "v":
        return (alpha**2 + sigma**2) ** 2 / sigma**2
    if prediction == "velocity":
        det = alpha * schedule.d_sigma(t) - sigma * schedule.d_alpha(t)
        return det**2 / sigma**2
    _, c_out = _edm_coeffs(alpha, sigma, sigma_data)
    return 1.0 / c_out**2
