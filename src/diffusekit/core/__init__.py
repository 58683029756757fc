"""The exact core: schedules, prediction conversions, the Denoiser contract, time grids, noise, GMMs."""

from .denoiser import CFGDenoiser, CountingDenoiser, Denoiser, FunctionDenoiser, NetworkDenoiser
from .gmm import GaussianMixture, GMMDenoiser
from .grids import (GRID_NAMES, check_grid, diffusers_dpm_timesteps, diffusers_timesteps, grid_diffusers,
                    grid_diffusers_dpm, grid_karras, grid_logsnr, grid_quadratic, grid_uniform, make_grid)
from .noise import generators_from_seeds, prior_sample, randn, randn_like
from .predictions import (PREDICTION_TYPES, convert, eps_from_x0, prediction_from_x0_eps, x0_from_prediction,
                          x0_loss_weight)
from .schedules import (FlowSchedule, Schedule, SubVPSchedule, VESchedule, VPDiscrete, VPLinear, betas_for,
                        rescale_zero_terminal_snr, schedule_from_config)

__all__ = [
    "CFGDenoiser", "CountingDenoiser", "Denoiser", "FunctionDenoiser", "NetworkDenoiser", "GaussianMixture",
    "GMMDenoiser", "GRID_NAMES", "check_grid", "diffusers_dpm_timesteps", "diffusers_timesteps", "grid_diffusers",
    "grid_diffusers_dpm", "grid_karras", "grid_logsnr",
    "grid_quadratic", "grid_uniform", "make_grid", "generators_from_seeds", "prior_sample", "randn", "randn_like",
    "PREDICTION_TYPES", "convert", "eps_from_x0", "prediction_from_x0_eps", "x0_from_prediction", "x0_loss_weight",
    "FlowSchedule", "Schedule", "SubVPSchedule", "VESchedule", "VPDiscrete", "VPLinear", "betas_for",
    "rescale_zero_terminal_snr",
    "schedule_from_config",
]
