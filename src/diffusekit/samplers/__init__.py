"""Samplers: pure functions ``sample_<name>(denoiser, x, ts, *, ...)`` over any schedule and time grid."""

from .baseline import sample, sample_ddim, sample_ddpm, sample_euler, sample_euler_maruyama
from .dpm_solver import (diffusers_dpm_timesteps, diffusers_multistep_orders, diffusers_singlestep_orders,
                         grid_diffusers_dpm, sample_dpm_solver_adaptive, sample_dpm_solver_grouped,
                         sample_dpm_solver_multistep, sample_dpm_solver_singlestep, sample_sde_dpm_solver_pp_2m)
from .karras import sample_euler_ancestral, sample_euler_sigma, sample_heun
from .momentum import (sample_dpm_solver_pp_ghvb, sample_dpm_solver_pp_hb, sample_plms_ghvb,
                       sample_plms_hb)
from .likelihood import pf_ode_log_likelihood, solve_pf_ode
from .plms import sample_plms, sample_pndm
from .predictor_corrector import sample_annealed_langevin, sample_pc  # noqa: F401  (registers pc, ncsn_langevin)
from .registry import SAMPLERS, SamplerInfo, get_sampler, register_sampler
from .unipc import sample_unipc
from .defaults import DEFAULT, default_timesteps

__all__ = ["DEFAULT", "SAMPLERS", "default_timesteps", "SamplerInfo", "diffusers_dpm_timesteps",
           "diffusers_multistep_orders", "diffusers_singlestep_orders", "get_sampler", "grid_diffusers_dpm",
           "pf_ode_log_likelihood",
           "register_sampler", "sample", "sample_ddim", "sample_ddpm", "sample_dpm_solver_adaptive",
           "sample_dpm_solver_grouped", "sample_dpm_solver_multistep", "sample_dpm_solver_singlestep", "sample_euler",
           "sample_euler_ancestral", "sample_euler_maruyama", "sample_euler_sigma", "sample_heun", "sample_plms",
           "sample_pndm", "sample_sde_dpm_solver_pp_2m", "sample_plms_hb", "sample_plms_ghvb",
           "sample_dpm_solver_pp_hb", "sample_dpm_solver_pp_ghvb", "sample_unipc", "solve_pf_ode"]
