"""Consecutive Brownian Bridge for frame interpolation (Lyu, Guo, Wang, Guo & Rachakonda 2024, arXiv 2405.05953).

Two Brownian bridges (``process.BrownianBridge``) leave the middle frame x towards its neighbours, the previous frame
y and the next frame z, driven by ONE shared noise draw eps:

    x^y_t = (1 - m_t) x + m_t y + sqrt(delta_t) eps,        x^z_t = (1 - m_t) x + m_t z + sqrt(delta_t) eps,

so x^y_t - x^z_t = m_t (y - z) exactly and both equal x at t = 0 (the pair is "consecutive": y -> x -> z).

Network: ``net(cat[state, other state, y, z], tau) -> state - x`` (the reference's objective "grad", x_t - x),
conditioning by channel concatenation; the side is told by the time input, tau = T - t on the y bridge and
tau = T + t on the z bridge (the reference's ``num_timesteps -/+ (t + 1)`` with its 0-based t).
Loss (the reference's ``bi_p_losses``): per example, pick one side at random,
L = mean |net(...) - (x_t - x)| * min(1 / sqrt(delta_t), 5), t uniform in {1, ..., T}.

Sampling (``bi_p_sample_loop``): both bridges start at the known neighbours, x^y_T = y and x^z_T = z, and step
jointly on the same grid, each network call conditioned on the other bridge's current state; one step costs one
batched forward pass over both bridges (NFE 2 per step). We share the step noise between the two bridges, which keeps
the pair on the set x^y_t - x^z_t = m_t (y - z) the network was trained on (``shared_noise=False`` draws the two
separately, as the reference code does). The estimate of the middle frame is the mean of the two bridges' final
states (the reference returns both).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...core.noise import GeneratorArg, randn_like
from .process import BrownianBridge, grid_bridge

__all__ = ["ConsecutiveBrownianBridge"]


class ConsecutiveBrownianBridge:
    """Two Brownian bridges sharing their noise (module docstring). Frames x, y, z: (B, C, H, W) in [-1, 1]."""

    def __init__(self, num_timesteps: int = 1000, *, max_var: float = 1.0, max_loss_weight: float = 5.0):
        self.bridge = BrownianBridge(num_timesteps, max_var=max_var)
        self.num_timesteps = num_timesteps
        self.max_loss_weight = float(max_loss_weight)
        self.config = {**self.bridge.config, "max_loss_weight": self.max_loss_weight}

    # --- forward process --------------------------------------------------------------------------------
    def q_sample_pair(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, t,
                      noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x^y_t, x^z_t), both bridges driven by the same ``noise``."""
        return self.bridge.q_sample(x, y, t, noise), self.bridge.q_sample(x, z, t, noise)

    def net_time(self, t, *, side: str, batch: int) -> torch.Tensor:
        """Network time input (float32, (batch,)): T - t on the y ("prev") side, T + t on the z ("next") side."""
        if side not in ("prev", "next"):
            raise ValueError(f"side must be 'prev' or 'next'; got {side!r}")
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(batch)
        return self.num_timesteps + (t if side == "next" else -t)

    def predict_x0(self, net: torch.nn.Module, state: torch.Tensor, other: torch.Tensor, y: torch.Tensor,
                   z: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """x0_hat = state - net(cat[state, other, y, z], tau)."""
        return state - net(torch.cat([state, other, y, z], dim=1), tau)

    def loss(self, net: torch.nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        """Per-example weighted L1 of the consecutive bridge; ``batch`` = (y, x, z) (previous, middle, next)."""
        y, x, z = batch[0], batch[1], batch[2]
        b = x.shape[0]
        t = torch.randint(1, self.num_timesteps + 1, (b,), generator=generator)
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        xy, xz = self.q_sample_pair(x, y, z, t, noise)
        next_side = (torch.rand(b, generator=generator) < 0.5).to(x.device).reshape(-1, *([1] * (x.dim() - 1)))
        state, other = torch.where(next_side, xz, xy), torch.where(next_side, xy, xz)
        tau = self.num_timesteps + torch.where(next_side.flatten(), t, -t).to(torch.float32).to(x.device)
        target = state - x
        pred = net(torch.cat([state, other, y, z], dim=1), tau)
        weight = self.bridge.loss_weight(t, x, max_weight=self.max_loss_weight).flatten()
        return (pred - target).abs().flatten(1).mean(1) * weight

    # --- sampling ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, net: torch.nn.Module, y: torch.Tensor, z: torch.Tensor, num_steps: int, *,
               eta: float = 1.0, generator: GeneratorArg = None, shared_noise: bool = True, clip: bool = True,
               callback: Callable | None = None) -> torch.Tensor:
        """Joint reverse stepping of both bridges from (y, z) at t = T to t = 0 on ``grid_bridge(num_steps)``;
        returns (x^y_0 + x^z_0) / 2. NFE = 2 num_steps (one batched call of 2B per step). ``clip`` clamps x0_hat
        to [-1, 1]. ``callback`` gets {"t", "s", "x_prev", "x_next", "x0_hat"} after each step."""
        ts = grid_bridge(num_steps, self.num_timesteps)
        b = y.shape[0]
        xy, xz = y.clone(), z.clone()
        for t, s in zip(ts[:-1].tolist(), ts[1:].tolist()):
            tau = torch.cat([self.net_time(t, side="prev", batch=b), self.net_time(t, side="next", batch=b)])
            states, others = torch.cat([xy, xz]), torch.cat([xz, xy])
            x0 = self.predict_x0(net, states, others, torch.cat([y, y]), torch.cat([z, z]), tau.to(y.device))
            if clip:
                x0 = x0.clamp(-1, 1)
            x0y, x0z = x0[:b], x0[b:]
            noise_y = randn_like(xy, generator) if s > 0 and eta > 0 else None
            noise_z = noise_y if shared_noise or noise_y is None else randn_like(xz, generator)
            xy = self.bridge.step(xy, x0y, y, t, s, eta=eta, noise=noise_y)
            xz = self.bridge.step(xz, x0z, z, t, s, eta=eta, noise=noise_z)
            if callback is not None:
                callback({"t": t, "s": s, "x_prev": xy, "x_next": xz, "x0_hat": (x0y + x0z) / 2})
        return (xy + xz) / 2
