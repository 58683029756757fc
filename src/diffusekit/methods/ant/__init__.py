"""ANT: Addressing Negative Transfer in diffusion models (Go et al., NeurIPS 2023, arXiv 2306.00354).

The denoising timesteps are grouped into k contiguous intervals (``clustering``: a dynamic program on log-SNR or
on a task-affinity matrix, or uniform), each interval is a task, and the k task losses are balanced by a
multi-task method (``balancing``: uncertainty weighting, PCGrad, Nash-MTL) in a stratified training loop
(``train``). DTR (Park et al. 2024, arXiv 2310.07138), its companion, lives in ``diffusekit.nets.dit``
(``DiT(dtr_beta=...)``); ``diffusekit bench dtr_ant`` compares both.
"""

from .balancing import (BALANCERS, MeanBalancer, NashMTL, PCGrad, UncertaintyWeighting, make_balancer,
                        nash_weights, pcgrad_project, task_gradients)
from .clustering import (CENTRE_ROUNDINGS, METHODS, centre_referenced_cost, cluster_timesteps, interval_centres,
                         interval_cost, log_snr_values, snr_cost, snr_values, tas_cost, uniform_intervals)
from .train import (check_intervals, diffusion_loss_at, interval_of, loss_by_interval, stratified_timesteps,
                    task_affinity, train_intervals)

__all__ = [
    "BALANCERS", "MeanBalancer", "NashMTL", "PCGrad", "UncertaintyWeighting", "make_balancer", "nash_weights",
    "pcgrad_project", "task_gradients",
    "CENTRE_ROUNDINGS", "METHODS", "centre_referenced_cost", "cluster_timesteps", "interval_centres",
    "interval_cost", "log_snr_values", "snr_cost", "snr_values", "tas_cost", "uniform_intervals",
    "check_intervals", "diffusion_loss_at", "interval_of", "loss_by_interval", "stratified_timesteps",
    "task_affinity", "train_intervals",
]
