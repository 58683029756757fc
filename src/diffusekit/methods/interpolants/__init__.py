"""Stochastic interpolants (Albergo, Boffi & Vanden-Eijnden 2023, arXiv 2303.08797): paths between any two
densities, their quadratic objectives as ``Trainer`` losses, ODE / SDE samplers with tunable diffusion, and a
``Denoiser`` view for the one-sided Gaussian paths::


    loss = InterpolantLoss("linear", "brownian", "velocity")       # b for data -> data or N(0, I) -> data
    net, _ = train_interpolant(loss, MLPDenoiserNet(2), (x1,), steps=1000)
    fields = InterpolantFields(loss.interpolant, velocity=loss.field(net), noise=loss.field(eta_net))
    x1_hat = sample_interpolant_sde(fields, x0, grid_interpolant(100), eps=0.5, generator=gens)
"""

from .denoiser import InterpolantDenoiser, TrigSchedule, schedule_of
from .losses import NETWORK_TIME_SCALE, PAIRINGS, TARGETS, InterpolantLoss, network_field, train_interpolant
from .paths import GAMMAS, PATHS, Gamma, Interpolant
from .sampling import InterpolantFields, grid_interpolant, sample_interpolant_ode, sample_interpolant_sde

__all__ = ["GAMMAS", "NETWORK_TIME_SCALE", "PAIRINGS", "PATHS", "TARGETS", "Gamma", "Interpolant",
           "InterpolantDenoiser", "InterpolantFields", "InterpolantLoss", "TrigSchedule", "grid_interpolant",
           "network_field", "sample_interpolant_ode", "sample_interpolant_sde", "schedule_of", "train_interpolant"]
