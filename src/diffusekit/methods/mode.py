"""Training and inference helpers for the MoDE denoiser (Reuss et al., ICLR 2025, arXiv 2412.12953).

The network is ``diffusekit.nets.mode.MoDE``. Here:

* ``MoDELoss``: a per-example ``Trainer`` loss, the diffusion loss plus the router losses of the same forward,

      L_i = L_diff,i + gamma * L_bal + gamma_z * L_z,     gamma = 0.01 (the paper's value from scratch),

  with L_bal = E * sum_e mean_b(P_be) * f_e (1 at uniform expert usage) and L_z the router z-loss;
* ``precompute_for_grid``: fix the routing and fuse the experts for every time a sampler will visit;
* ``routing_entropy``: how much the experts specialise by noise level.
"""

from __future__ import annotations

import torch

from ..core.denoiser import NetworkDenoiser
from ..training.losses import DiffusionLoss

__all__ = ["MoDELoss", "BALANCE_WEIGHT", "precompute_for_grid", "routing_entropy"]

BALANCE_WEIGHT = 0.01


def _unwrap(net: torch.nn.Module) -> torch.nn.Module:
    return getattr(net, "module", net)  # DDP


class MoDELoss:
    """Per-example loss ``loss(net, batch, generator) -> (B,)`` for a ``MoDE`` net (usable by ``Trainer``):

        L_i = base(net, batch)_i + balance_weight * L_bal + z_weight * L_z

    where ``base`` is a ``DiffusionLoss`` and L_bal, L_z are ``net.aux_loss()`` of that same forward (batch
    statistics, so every example carries the same router term and the batch mean adds exactly gamma * L_bal).
    MoDE, Reuss et al. 2025 (arXiv 2412.12953), Sec. 3: load-balancing weight 0.01 when training from scratch.
    """

    def __init__(self, base: DiffusionLoss, balance_weight: float = BALANCE_WEIGHT, z_weight: float = 0.0):
        if balance_weight < 0 or z_weight < 0:
            raise ValueError(f"balance_weight and z_weight must be >= 0, got {balance_weight}, {z_weight}")
        self.base = base
        self.balance_weight = float(balance_weight)
        self.z_weight = float(z_weight)
        self.schedule = base.schedule

    def denoiser(self, net: torch.nn.Module) -> NetworkDenoiser:
        """The Denoiser this loss trains ``net`` to be."""
        return self.base.denoiser(net)

    def __call__(self, net: torch.nn.Module, batch, generator=None) -> torch.Tensor:
        per_example = self.base(net, batch, generator)
        aux = _unwrap(net).aux_loss()
        extra = self.balance_weight * aux["balance"]
        if self.z_weight > 0:
            extra = extra + self.z_weight * aux["z"]
        return per_example + extra.to(per_example.dtype)


def precompute_for_grid(denoiser: NetworkDenoiser, ts, class_labels=None) -> torch.Tensor:
    """Call ``net.precompute_experts`` at the network times of every grid time in ``ts`` (as
    ``NetworkDenoiser.net_inputs`` computes them), so a sampler over ``ts`` runs on fused experts.
    Returns the network times (M,)."""
    ts = torch.as_tensor(ts, dtype=torch.float64)
    dtype = next(denoiser.net.parameters()).dtype
    times = denoiser.schedule.network_time(ts).to(dtype)
    _unwrap(denoiser.net).precompute_experts(times, class_labels)
    return times


def routing_entropy(probs: torch.Tensor) -> dict[str, float]:
    """Specialisation of the router over noise levels from its probabilities ``probs`` (..., M, E) at M times:

    ``per_time`` = mean_m H(p_m) (nats; low = confident routing), ``marginal`` = H(mean_m p_m) (high = all
    experts used over the trajectory) and ``mutual_information`` = marginal - per_time, the information the
    noise level gives about the expert (0 when routing ignores t; at most log E)."""
    p = probs.double().clamp_min(1e-12)
    per_time = -(p * p.log()).sum(-1).mean(-1)
    mean = p.mean(-2)
    marginal = -(mean * mean.log()).sum(-1)
    return {"per_time": float(per_time.mean()), "marginal": float(marginal.mean()),
            "mutual_information": float((marginal - per_time).mean())}
