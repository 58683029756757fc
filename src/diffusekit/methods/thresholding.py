"""Thresholding of the denoised estimate x0_hat, as Denoiser -> Denoiser wrappers.

Pixel-space models of data in [-1, 1] can predict x0_hat far outside that range at high noise levels,
especially under large guidance weights; clipping x0_hat before it enters the sampler's update keeps
samples in range (Ho et al. 2020's ``clip_denoised``; Saharia et al. 2022). Because the wrappers act on
x0_hat, every sampler picks them up unchanged (its eps_hat is re-derived from the clipped x0_hat, i.e.
diffusers' ``use_clipped_model_output=True``). Not meant for latent-space models, whose latents have no
fixed range.
"""

from __future__ import annotations

import math

import torch

from ..core.denoiser import Denoiser


class StaticThresholdDenoiser(Denoiser):
    """Static thresholding: x0_hat <- clip(x0_hat, -r, r), r = ``clip_range`` (default 1; diffusers'
    ``clip_sample`` with ``clip_sample_range``)."""

    def __init__(self, denoiser: Denoiser, *, clip_range: float = 1.0):
        super().__init__(denoiser.schedule)
        if not clip_range > 0:
            raise ValueError(f"clip_range must be > 0; got {clip_range}")
        self.inner = denoiser
        self.clip_range = float(clip_range)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        return self.inner.denoise(x, t, **cond).clamp(-self.clip_range, self.clip_range)


def dynamic_threshold(x0: torch.Tensor, *, ratio: float = 0.995, sample_max_value: float = math.inf) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Imagen, arXiv 2205.11487, §2.3) of a batch (B, ...):

        s  = clamp(quantile_ratio(|x0_b|), min=1, max=sample_max_value)     per sample b
        x0 <- clip(x0, -s, s) / s

    The quantile runs over all non-batch elements with linear interpolation (``torch.quantile``), as in
    diffusers' ``_threshold_sample`` (``dynamic_thresholding_ratio``, ``sample_max_value``); half
    precision is upcast to float32 for the quantile. s >= 1 leaves an x0 already inside [-1, 1]
    unchanged, and the output always lies in [-1, 1]. The paper has no upper bound (the default
    ``sample_max_value = inf``); diffusers' schedulers default to ``sample_max_value = 1.0``, which makes
    this plain clipping to [-1, 1].
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1]; got {ratio}")
    if not sample_max_value >= 1:
        raise ValueError(f"sample_max_value must be >= 1; got {sample_max_value}")
    dtype = x0.dtype
    work = x0 if dtype in (torch.float32, torch.float64) else x0.float()
    flat = work.reshape(work.shape[0], -1)  # (B, D)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=sample_max_value).unsqueeze(1)  # (B, 1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


class DynamicThresholdDenoiser(Denoiser):
    """Dynamic thresholding of x0_hat (Saharia et al. 2022, arXiv 2205.11487, §2.3) as a Denoiser wrapper;
    see ``dynamic_threshold``. Defaults: ``ratio`` (the percentile p) 0.995, ``sample_max_value`` inf."""

    def __init__(self, denoiser: Denoiser, *, ratio: float = 0.995, sample_max_value: float = math.inf):
        super().__init__(denoiser.schedule)
        dynamic_threshold(torch.zeros(1, 1), ratio=ratio, sample_max_value=sample_max_value)  # validate options
        self.inner = denoiser
        self.ratio = float(ratio)
        self.sample_max_value = float(sample_max_value)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        return dynamic_threshold(self.inner.denoise(x, t, **cond), ratio=self.ratio,
                                 sample_max_value=self.sample_max_value)


__all__ = ["DynamicThresholdDenoiser", "StaticThresholdDenoiser", "dynamic_threshold"]
