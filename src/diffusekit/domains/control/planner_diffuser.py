"""Diffuser: value-guided trajectory diffusion (Janner, Du, Tenenbaum, Levine; ICML 2022, arXiv 2205.09991).

A temporal 1-D UNet (``nets.UNet``, ``dims=1``) denoises whole state trajectories tau = (s_0, ..., s_{H-1}) of the
maze (channels = the 4 state dimensions, length H = 32), x0-prediction with T = 20 cosine steps (the official code's
defaults; the paper used T = 100). Planning for one decision (sec. 3.2-3.3, Alg. 1):

    x_{T-1} ~ N(0, I);  for n = T-1 .. 0:
        repeat n_guide_steps (= 2) times, unless n < t_stopgrad (= 2):
            x <- x + scale Sigma_n grad_x V(x, n),   Sigma_n the DDPM posterior variance   (value guidance)
            x[:, :, 0] <- s_current                                                        (inpainting)
        x0_hat = D(x, n) clipped to [-1, 1];  x <- mean_n(x, x0_hat) + sqrt(Sigma_n) z;   x[:, :, 0] <- s_current

over a batch of ``n_candidates`` (= 64) trajectories; the one with the highest V is kept, and the first action is
a_0 = f_inv(s_0, s_1) (inverse dynamics, since our trajectories hold states only; the paper diffuses (s, a) jointly).
One decision costs T denoiser calls + 2 (T - t_stopgrad) value-gradient calls + 1 value call + 1 inverse-dynamics call.
Replanning happens at every environment step.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core import CountingDenoiser, NetworkDenoiser, VPDiscrete
from ...nets import UNet
from .maze_data import MazeDataset
from .planner_nets import (InverseDynamics, LimitsNormalizer, TemporalValue, ddpm_posterior_step, fit,
                           inpaint_first_state, posterior_variance)

DIFFUSER_DEFAULTS = {"horizon": 32, "n_diffusion_steps": 20, "beta_schedule": "cosine", "base_channels": 16,
                     "channel_mult": [1, 2, 4], "guide_scale": 0.1, "n_guide_steps": 2, "t_stopgrad": 2,
                     "n_candidates": 64, "state_dim": 4, "action_dim": 2}


class DiffuserPlanner(nn.Module):
    """Diffuser's four parts (UNet denoiser, value V, inverse dynamics, state normaliser); ``config`` rebuilds it."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = {**DIFFUSER_DEFAULTS, **config, "method": "diffuser"}
        c = self.config
        self.normalizer = LimitsNormalizer(torch.zeros(c["state_dim"]), torch.ones(c["state_dim"]))
        self.unet = UNet(in_channels=c["state_dim"], base_channels=c["base_channels"],
                         channel_mult=tuple(c["channel_mult"]), num_res_blocks=1, attention_resolutions=(), dims=1,
                         image_size=c["horizon"])
        self.value = TemporalValue(c["state_dim"], c["horizon"])
        self.inverse_dynamics = InverseDynamics(c["state_dim"], c["action_dim"])
        self.schedule = VPDiscrete.named(c["beta_schedule"], c["n_diffusion_steps"])

    def denoiser(self) -> NetworkDenoiser:
        return NetworkDenoiser(self.unet, self.schedule, "x0")

    def guide(self, x: torch.Tensor, n: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
        """One value-guidance step x <- x + scale Sigma_n grad_x V(x, n), then x[:, :, 0] <- s0 (Diffuser's
        ``n_step_guided_p_sample``; x (B, C, H), n (B,) long with one shared value, s0 (B, C))."""
        with torch.enable_grad():
            x_req = x.detach().requires_grad_(True)
            self.value(x_req, n).sum().backward(inputs=[x_req])  # backward(), not autograd.grad: FLOP-countable
            grad = x_req.grad
        step = self.config["guide_scale"] * posterior_variance(self.schedule, int(n[0]))
        return inpaint_first_state(x + step * grad, s0)

    def plan(self, observation, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """One decision: (action (action_dim,), info with the chosen normalised plan and NFE counts)."""
        c = self.config
        s0 = self.normalizer.normalize(torch.as_tensor(observation, dtype=torch.float32).reshape(1, -1))
        s0 = s0.expand(c["n_candidates"], -1)
        denoiser = CountingDenoiser(self.denoiser())
        value_calls = 0
        x = torch.randn((c["n_candidates"], c["state_dim"], c["horizon"]), generator=generator)
        x = inpaint_first_state(x, s0)
        for n in range(c["n_diffusion_steps"] - 1, -1, -1):
            n_t = torch.full((x.shape[0],), n)
            if n >= c["t_stopgrad"]:
                for _ in range(c["n_guide_steps"]):
                    x = self.guide(x, n_t, s0)
                    value_calls += 1
            with torch.no_grad():
                x0_hat = denoiser(x, self.schedule.t_of_timestep(n)).clamp(-1, 1)
                x = inpaint_first_state(ddpm_posterior_step(self.schedule, n, x, x0_hat, generator), s0)
        with torch.no_grad():
            values = self.value(x, torch.zeros(x.shape[0]))
            best = int(values.argmax())
            plan = x[best].T  # (H, state_dim)
            action = self.inverse_dynamics(plan[0:1], plan[1:2])[0].clamp(-1, 1)
        nfe = {"denoiser": denoiser.calls, "value": value_calls + 1, "autoregressive": 0, "inverse_dynamics": 1,
               "critic": 0}
        nfe["total"] = sum(nfe.values())
        return action, {"plan": plan, "nfe": nfe, "value": float(values[best])}


def train_diffuser(dataset: MazeDataset, *, steps: int = 2000, seed: int = 0, progress: bool = False,
                   batch_size: int = 64, lr: float = 1e-3, **config) -> DiffuserPlanner:
    """Train Diffuser's parts on ``dataset`` for ``steps`` Adam steps each:

    * denoiser, x0-prediction: || D(x_n, n) - x0 ||^2 with x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps and the
      first state of x_n and of the output inpainted with the clean s_0 (Diffuser's ``p_losses``);
    * value: || V(x_n, n) - R_0 / R_max ||^2 on the same noisy trajectories (Diffuser's ``ValueDiffusion``);
    * inverse dynamics: || f_inv(s_t, s_{t+1}) - a_t ||^2 on all transitions.
    """
    torch.manual_seed(seed)  # parameter initialisation only; data and noise use explicit generators
    model = DiffuserPlanner(config)
    c = model.config
    lo, hi = dataset.state_limits()
    model.normalizer = LimitsNormalizer(lo, hi)
    win = dataset.windows(c["horizon"])
    x0_all = model.normalizer.normalize(win["states"]).transpose(1, 2).contiguous()  # (N, C, H)
    rtg_scale = float(win["rtg"].max().clamp_min(1e-6))
    model.config["rtg_scale"] = rtg_scale
    target_all = win["rtg"] / rtg_scale
    abar = model.schedule.alphas_cumprod.to(torch.float32)
    T = c["n_diffusion_steps"]

    def noisy(idx, gen):
        x0 = x0_all[idx]
        n = torch.randint(T, (len(idx),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[n].sqrt()[:, None, None]
        x_n = inpaint_first_state(a * x0 + (1 - a**2).sqrt() * eps, x0[:, :, 0])
        return x0, x_n, n

    def denoiser_loss(idx, gen):
        x0, x_n, n = noisy(idx, gen)
        pred = inpaint_first_state(model.unet(x_n, n.float()), x0[:, :, 0])
        return ((pred - x0) ** 2).mean()

    def value_loss(idx, gen):
        _, x_n, n = noisy(idx, gen)
        return ((model.value(x_n, n) - target_all[idx]) ** 2).mean()

    fit(model.unet, denoiser_loss, len(x0_all), steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        progress=progress, desc="diffuser denoiser")
    fit(model.value, value_loss, len(x0_all), steps=steps, batch_size=batch_size, lr=lr, seed=seed + 1,
        progress=progress, desc="diffuser value")
    train_inverse_dynamics(model.inverse_dynamics, model.normalizer, dataset, steps=steps, seed=seed + 2,
                           progress=progress)
    return model


def train_inverse_dynamics(inv: InverseDynamics, normalizer: LimitsNormalizer, dataset: MazeDataset, *, steps: int,
                           seed: int, progress: bool = False, batch_size: int = 256, lr: float = 1e-3) -> list[float]:
    """MSE regression a_t = f_inv(s_t, s_{t+1}) on all of ``dataset``'s transitions (normalised states)."""
    tr = dataset.transitions()
    s, s_next, a = normalizer.normalize(tr["s"]), normalizer.normalize(tr["s_next"]), tr["a"]
    return fit(inv, lambda idx, gen: ((inv(s[idx], s_next[idx]) - a[idx]) ** 2).mean(), len(a), steps=steps,
               batch_size=batch_size, lr=lr, seed=seed, progress=progress, desc="inverse dynamics")
