"""Per-example diffusion losses for eps / x0 / v / score / flow-velocity / EDM targets, with weightings.

For a batch x0, times t ~ p(t), eps ~ N(0, I) and x_t = alpha_t x0 + sigma_t eps, the loss of example i is

    L_i = w_target(t_i) * mean_j (F(x_t, t_i)_j - target(x0, eps, t_i)_j)^2

where F is the raw network output (through ``NetworkDenoiser.raw``, so the input scaling and time input
are exactly the ones used at sampling time) and the target comes from ``prediction_from_x0_eps``. Weightings
are stated in x0 space, w_x0(t), and turned into target space by dividing by ``x0_loss_weight``:

* ``uniform``: plain MSE on the chosen target (w_target = 1; the DDPM "simple" loss for eps).
* ``min_snr``: w_x0 = min(SNR(t), gamma) (Hang et al. 2023, arXiv 2303.09556, eq. 7; gamma = 5).
* ``edm``: w_x0 = (s^2 + sd^2) / (s sd)^2 with s = sigma/alpha (Karras et al. 2022, Tab. 1), which
  makes the ``edm`` prediction's loss uniform.

Time sampling: ``uniform`` (integer steps for ``VPDiscrete``, else uniform on [t_min, t_max]) or
``lognormal`` (EDM: ln s ~ N(P_mean, P_std^2), s = sigma/alpha mapped to t).
"""

from __future__ import annotations

import torch

from ..core import noise
from ..core._tensor import per_sample
from ..core.denoiser import NetworkDenoiser
from ..core.predictions import check_prediction, prediction_from_x0_eps, x0_loss_weight
from ..core.schedules import VPDiscrete

WEIGHTINGS = ("uniform", "min_snr", "edm")
TIME_SAMPLINGS = ("uniform", "lognormal")


def _per_example(generator, batch: int, draw) -> torch.Tensor:
    """``draw(n, generator)`` for the whole batch, or one ``draw(1, g)`` per example when ``generator`` is a list
    of generators (the trainer's ``loss_noise="per_example"``: draws then do not depend on the batch split)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch}; give one per example")
        return torch.cat([draw(1, g) for g in generator])
    return draw(batch, generator)


def class_condition(net: torch.nn.Module, labels: torch.Tensor | None, label_dropout: float, generator) -> dict:
    """The ``cond`` of a training batch: ``{"class_labels": labels}`` (``{}`` without labels), each label replaced by
    the null class ``num_classes`` with probability ``label_dropout`` (classifier-free guidance training, Ho &
    Salimans 2022, arXiv 2207.12598). The dropout draws come after the loss's other draws, from ``generator`` (one
    generator, a list of one per example, or None). ValueError when labels meet an unconditional network."""
    if labels is None:
        return {}
    num_classes = (getattr(getattr(net, "module", net), "config", None) or {}).get("num_classes")
    if num_classes is None:
        raise ValueError("batch has class labels but the network is unconditional (num_classes=None)")
    if label_dropout > 0:
        drop = _per_example(generator, labels.shape[0], lambda n, g: torch.rand(n, generator=g)) < label_dropout
        labels = torch.where(drop.to(labels.device), torch.full_like(labels, num_classes), labels)
    return {"class_labels": labels}


def sample_times(schedule, batch: int, generator=None, *, method: str = "uniform",
                 p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
    """Training times t (float64, shape (batch,)); see the module docstring. ``generator``: one CPU generator,
    a list of one per example, or None (the global RNG)."""
    if isinstance(generator, (list, tuple)):
        return _per_example(generator, batch, lambda n, g: sample_times(schedule, n, g, method=method,
                                                                        p_mean=p_mean, p_std=p_std))
    if method == "uniform":
        if isinstance(schedule, VPDiscrete):
            n = torch.randint(0, schedule.num_train_timesteps, (batch,), generator=generator)
            return schedule.t_of_timestep(n)
        u = torch.rand(batch, generator=generator, dtype=torch.float64)
        return schedule.t_min + u * (schedule.t_max - schedule.t_min)
    if method == "lognormal":
        log_s = p_mean + p_std * torch.randn(batch, generator=generator, dtype=torch.float64)
        t = schedule.t_of_sigma_tilde(torch.exp(log_s))
        return torch.clamp(t, schedule.t_min, schedule.t_max)
    raise ValueError(f"unknown time sampling {method!r}; allowed: {', '.join(TIME_SAMPLINGS)}")


def loss_weight(t: torch.Tensor, schedule, prediction: str, weighting: str, *, min_snr_gamma: float = 5.0,
                sigma_data: float = 0.5) -> torch.Tensor:
    """w_target(t) = w_x0(t) / x0_loss_weight(t) (float64, shape like t)."""
    if weighting == "uniform":
        return torch.ones_like(t)
    if weighting == "min_snr":
        w_x0 = torch.clamp(schedule.snr(t), max=min_snr_gamma)
    elif weighting == "edm":
        s = schedule.sigma_tilde(t)
        w_x0 = (s**2 + sigma_data**2) / (s * sigma_data) ** 2
    else:
        raise ValueError(f"unknown weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}")
    return w_x0 / x0_loss_weight(t, schedule, prediction, sigma_data=sigma_data)


class DiffusionLoss:
    """Per-example denoising loss for a network, usable as a ``Trainer`` loss function.

    Call as ``loss(net, batch, generator) -> Tensor[B]`` with batch = (x0,) or (x0, labels); ``generator`` is
    a CPU generator or a list of one per example (then every draw of example i comes from generator i). With
    ``label_dropout`` p > 0 and class labels, each label is replaced by the null class with probability p
    (classifier-free guidance training, Ho & Salimans 2022).
    """

    def __init__(self, schedule, prediction: str = "eps", *, weighting: str = "uniform", min_snr_gamma: float = 5.0,
                 time_sampling: str = "uniform", sigma_data: float = 0.5, label_dropout: float = 0.0,
                 scale_input: bool | None = None):
        check_prediction(prediction)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}")
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time sampling {time_sampling!r}; allowed: {', '.join(TIME_SAMPLINGS)}")
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1); got {label_dropout}")
        self.schedule = schedule
        self.prediction = prediction
        self.weighting = weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self.time_sampling = time_sampling
        self.sigma_data = float(sigma_data)
        self.label_dropout = float(label_dropout)
        self.scale_input = scale_input

    def config(self) -> dict:
        return {"prediction": self.prediction, "weighting": self.weighting, "min_snr_gamma": self.min_snr_gamma,
                "time_sampling": self.time_sampling, "sigma_data": self.sigma_data,
                "label_dropout": self.label_dropout, "scale_input": self.scale_input,
                "schedule": self.schedule.config()}

    def denoiser(self, net: torch.nn.Module) -> NetworkDenoiser:
        """The Denoiser this loss trains ``net`` to be (same prediction type and input scaling)."""
        return NetworkDenoiser(net, self.schedule, self.prediction, scale_input=self.scale_input,
                               sigma_data=self.sigma_data)

    def __call__(self, net: torch.nn.Module, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x0 = batch[0]
        labels = batch[1] if len(batch) > 1 else None
        b = x0.shape[0]
        t = sample_times(self.schedule, b, generator, method=self.time_sampling).to(x0.device)
        eps = noise.randn(x0.shape, generator, dtype=x0.dtype).to(x0.device)
        return self.loss_at(net, x0, t, eps, labels, generator)

    def loss_at(self, net: torch.nn.Module, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                labels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-example loss (B,) at given times t (B,) and noise eps (shaped like x0):
        L_i = w(t_i) mean_j (F(x_t, t_i)_j - target_j)^2 with x_t = alpha_t x0 + sigma_t eps. ``generator`` only
        feeds label dropout. ``__call__`` draws t and eps, then calls this."""
        return self.loss_given_condition(net, x0, t, eps, class_condition(net, labels, self.label_dropout, generator))

    def loss_given_condition(self, net: torch.nn.Module, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                             cond: dict) -> torch.Tensor:
        """``loss_at`` with the network's keyword condition given as is (class labels, first frames, ...)."""
        x_t = self.schedule.add_noise(x0, t, eps)
        out = self.denoiser(net).raw(x_t, t, **cond)
        target = prediction_from_x0_eps(x0, eps, t, self.schedule, self.prediction, sigma_data=self.sigma_data)
        per_example = ((out - target) ** 2).flatten(1).mean(1)
        weight = loss_weight(t, self.schedule, self.prediction, self.weighting, min_snr_gamma=self.min_snr_gamma,
                             sigma_data=self.sigma_data)
        return per_example * per_sample(weight, per_example)
