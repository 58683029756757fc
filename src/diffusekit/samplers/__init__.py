"""Samplers: pure functions ``sample_<name>(denoiser, x, ts, *, ...)`` over any schedule and time grid."""

from .baseline import sample, sample_ddim, sample_ddpm, sample_euler, sample_euler_maruyama
from .registry import SAMPLERS, SamplerInfo, get_sampler, register_sampler

__all__ = ["SAMPLERS", "SamplerInfo", "get_sampler", "register_sampler", "sample", "sample_ddim", "sample_ddpm",
           "sample_euler", "sample_euler_maruyama"]
