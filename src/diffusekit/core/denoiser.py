"""The Denoiser contract: ``x0_hat = denoiser(x, t, **cond)``, carrying its schedule.

Samplers only ever see a Denoiser, so they never branch on what a network predicts. A network of
any prediction type becomes a Denoiser through ``NetworkDenoiser``; wrappers (guidance, counting,
thresholding, ...) are Denoiser -> Denoiser.
"""

from __future__ import annotations

import math

import torch

from ._tensor import as_time, per_sample
from .predictions import check_prediction, eps_from_x0, x0_from_prediction
from .schedules import Schedule


class Denoiser:
    """Base class. Subclasses implement ``denoise(x, t, **cond)`` where t is float64 of shape (B,).

    ``__call__`` accepts t as a Python number, a 0-d tensor or a (B,) tensor (schedule time, not the
    network's time input) and returns x0_hat with x's shape and dtype.
    """

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def denoise(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        return self.denoise(x, as_time(t, batch=x.shape[0], device=x.device), **cond)

    def eps(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        """eps_hat = (x - alpha x0_hat) / sigma, derived from the same single evaluation."""
        t = as_time(t, batch=x.shape[0], device=x.device)
        return eps_from_x0(self.denoise(x, t, **cond), x, t, self.schedule)


class NetworkDenoiser(Denoiser):
    """Wrap ``net(x_in, t_in, class_labels=...)`` trained with a given prediction type.

    x_in = c_in x with c_in = 1/sqrt(alpha^2 sigma_data^2 + sigma^2) when ``scale_input`` (EDM's input
    preconditioning, needed for VE where sigma reaches 80), else x; t_in = schedule.network_time(t).
    The network runs in its own parameter dtype; the result is cast back to x's dtype, so samplers
    can work in float64 around a float32 network.
    """

    def __init__(self, net: torch.nn.Module, schedule: Schedule, prediction: str = "eps", *,
                 scale_input: bool | None = None, sigma_data: float = 0.5):
        super().__init__(schedule)
        self.net = net
        self.prediction = check_prediction(prediction)
        self.scale_input = (schedule.kind == "ve") if scale_input is None else bool(scale_input)
        self.sigma_data = float(sigma_data)

    @property
    def num_classes(self) -> int | None:
        cfg = getattr(getattr(self.net, "module", self.net), "config", None) or {}  # unwrap DDP
        return cfg.get("num_classes")

    @property
    def null_class(self) -> int:
        if self.num_classes is None:
            raise ValueError("this network is unconditional: it has no class labels")
        return int(self.num_classes)

    def net_inputs(self, x: torch.Tensor, t: torch.Tensor):
        """(x_in, t_in) as the network sees them, in the network's dtype."""
        dtype = next(self.net.parameters()).dtype
        x_in = x
        if self.scale_input:
            alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
            x_in = x * per_sample(1.0 / torch.sqrt(alpha**2 * self.sigma_data**2 + sigma**2), x)
        return x_in.to(dtype), self.schedule.network_time(t).to(dtype=dtype, device=x.device)

    def raw(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        """The network output (in its prediction type), in x's dtype."""
        x_in, t_in = self.net_inputs(x, t)
        return self.net(x_in, t_in, **cond).to(x.dtype)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        return x0_from_prediction(self.raw(x, t, **cond), x, t, self.schedule, self.prediction,
                                  sigma_data=self.sigma_data)


class CFGDenoiser(Denoiser):
    """Classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598) as a Denoiser wrapper:

        x0_hat = x0_u + w (x0_c - x0_u)

    (equivalently eps_u + w (eps_c - eps_u), since both are affine in the same x). The conditional and
    null-label passes run as one batched network call. ``w = 1`` is the conditional model; ``w = 0`` the
    unconditional one. Requires ``class_labels`` at call time.
    """

    def __init__(self, denoiser: NetworkDenoiser, scale: float):
        super().__init__(denoiser.schedule)
        if not math.isfinite(scale):
            raise ValueError(f"guidance scale must be a finite number; got {scale}")
        self.inner = denoiser
        self.scale = float(scale)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, *, class_labels: torch.Tensor, **cond) -> torch.Tensor:
        if self.scale == 1.0:
            return self.inner.denoise(x, t, class_labels=class_labels, **cond)
        null = torch.full_like(class_labels, self.inner.null_class)
        both = self.inner.denoise(torch.cat([x, x]), torch.cat([t, t]),
                                  class_labels=torch.cat([class_labels, null]), **cond)
        x0_c, x0_u = both.chunk(2)
        return x0_u + self.scale * (x0_c - x0_u)


class CountingDenoiser(Denoiser):
    """Counts network evaluations (NFE): one per call, whatever the batch size."""

    def __init__(self, denoiser: Denoiser):
        super().__init__(denoiser.schedule)
        self.inner = denoiser
        self.calls = 0

    def denoise(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        self.calls += 1
        return self.inner.denoise(x, t, **cond)


class FunctionDenoiser(Denoiser):
    """Wrap a plain function ``f(x, t) -> x0_hat`` (t float64 (B,)) as a Denoiser."""

    def __init__(self, fn, schedule: Schedule):
        super().__init__(schedule)
        self.fn = fn

    def denoise(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        return self.fn(x, t, **cond)
