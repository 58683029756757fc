"""Classifier-free guidance variants as Denoiser wrappers: rescale (std matching) and a limited interval.

* CFG (Ho & Salimans 2022, arXiv 2207.12598): e_cfg = e_u + w (e_c - e_u), computed here in eps space.
* Rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", arXiv 2305.08891,
  §3.4, eq. 15–16; EzAudio uses phi = 0.75): e_resc = e_cfg * std(e_c) / std(e_cfg), with the standard deviation
  over all non-batch dimensions of each sample, then e = phi e_resc + (1 - phi) e_cfg. It counters the
  over-saturation that large w causes.
* Limited interval (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample and
  Distribution Quality", arXiv 2404.07724): guidance only while t lies in [t_low, t_high]; elsewhere the
  conditional model alone (one network pass on a batch of B instead of 2B).

Guidance acts on eps_hat = (x - alpha x0_hat)/sigma and is converted back to x0_hat, so it composes with every
sampler and schedule. For w and phi the wrapper is exactly ``CFGDenoiser`` when phi = 0 and no interval is set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core._tensor import per_sample
from ..core.denoiser import Denoiser, NetworkDenoiser
from ..core.predictions import eps_from_x0


def rescale_guided_eps(eps_cfg: torch.Tensor, eps_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. eq. 15–16: match each sample's std of the guided prediction to the conditional one, mix by phi."""
    dims = tuple(range(1, eps_cfg.ndim))
    ratio = eps_cond.std(dim=dims, keepdim=True) / eps_cfg.std(dim=dims, keepdim=True)
    return phi * (eps_cfg * ratio) + (1.0 - phi) * eps_cfg


class GuidedDenoiser(Denoiser):
    """Classifier-free guidance with optional rescale ``phi`` in [0, 1] and a guidance ``interval`` (t_low, t_high).

    Requires ``class_labels`` at call time, unless ``null_condition`` is given: a callable mapping the call's
    condition dict to the null one (same keys and batch size, e.g. the encoded empty caption as ``context`` and
    ``context_mask`` for text-to-image, ``methods.text_conditioning.NullCaption``); e_u is then the model under
    that condition. One batched network call per evaluation (2B samples when any sample of the batch is inside
    the interval, else B).
    """

    def __init__(self, denoiser: NetworkDenoiser, scale: float, *, rescale: float = 0.0,
                 interval: tuple[float, float] | None = None, null_condition: Callable[[dict], dict] | None = None):
        super().__init__(denoiser.schedule)
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"rescale (phi) must be in [0, 1]; got {rescale}")
        if interval is not None:
            lo, hi = interval
            if not 0 <= lo < hi:
                raise ValueError(f"interval must be (t_low, t_high) with 0 <= t_low < t_high; got {interval}")
        self.inner = denoiser
        self.scale = float(scale)
        self.rescale = float(rescale)
        self.interval = None if interval is None else (float(interval[0]), float(interval[1]))
        self.null_condition = null_condition

    def _active(self, t: torch.Tensor) -> torch.Tensor:
        if self.interval is None:
            return torch.ones_like(t, dtype=torch.bool)
        return (t >= self.interval[0]) & (t <= self.interval[1])

    def _paired_condition(self, cond: dict) -> dict:
        """The condition of the batch [x, x]: the caller's condition, then the null one (the null class, or
        ``null_condition(cond)``, whose tensors are concatenated key by key behind the caller's)."""
        if self.null_condition is None:
            if "class_labels" not in cond:
                raise ValueError("GuidedDenoiser needs class_labels at call time (or a null_condition)")
            labels = cond["class_labels"]
            return {**cond, "class_labels": torch.cat([labels, torch.full_like(labels, self.inner.null_class)])}
        null = self.null_condition(cond)
        return {k: torch.cat([v, null[k]]) if k in null else v for k, v in cond.items()}

    def denoise(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        active = self._active(t)
        if self.scale == 1.0 or not bool(active.any()):
            return self.inner.denoise(x, t, **cond)
        both = self.inner.denoise(torch.cat([x, x]), torch.cat([t, t]), **self._paired_condition(cond))
        x0_c, x0_u = both.chunk(2)
        eps_c = eps_from_x0(x0_c, x, t, self.schedule)
        eps_u = eps_from_x0(x0_u, x, t, self.schedule)
        eps = eps_u + self.scale * (eps_c - eps_u)
        if self.rescale > 0:
            eps = rescale_guided_eps(eps, eps_c, self.rescale)
        alpha, sigma = per_sample(self.schedule.alpha(t), x), per_sample(self.schedule.sigma(t), x)
        x0 = (x - sigma * eps) / alpha
        return torch.where(per_sample(active, x).bool(), x0, x0_c)
