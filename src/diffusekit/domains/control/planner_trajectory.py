"""Trajectory Diffuser: diffusion as a short-range trajectory optimiser after a fast autoregressive generator
(Huang, Pei, Wang, Zhang, Yang, Wang, Shen; "Diffusion Models as Optimizers for Efficient Planning in Offline RL",
ECCV 2024, arXiv 2407.16142; code RenMing-Huang/TrajectoryDiffuser at commit 214039d).

Parts, each trained by MSE on the offline maze data:

* feasible generator: a GRU (``planner_nets.ARGenerator``) over tokens (s_k, R_k) predicting (s_{k+1}, R_{k+1});
* planner: a temporal 1-D UNet (``nets.UNet``, dims=1) over state trajectories, eps-prediction, 100 linear-beta steps,
  classifier-free guidance on the return-to-go (the official code embeds the continuous R; we condition on its
  quantile bin, ``n_return_bins`` classes plus a null class, label dropout 0.25), the noise on state 0 set to 0;
* inverse dynamics (s_t, s_{t+1}) -> a and a critic Q(s, a) regressed to the return-to-go.

One decision: repeat the current state ``n_candidates`` (= 32) times; the generator rolls out H - 1 states
conditioned on the target return, giving tau_0; then ``refine_steps`` (= 5) DDPM reverse steps n = 4 .. 0 of the
100-step schedule start directly from tau_0, with no noise added to it first:

    x0_hat = D_cfg(x, n), clipped;  x <- mean_n(x, x0_hat) + sqrt(Sigma_n) z  (z = 0 at n = 0);  x[:, :, 0] <- s_0

(each D_cfg call runs the conditional and null-label passes as one batch); a_i = f_inv(s_0, x_i[1]) per candidate and
one candidate is drawn with probability softmax(Q(s_0, a_i)) (Q in return units). ``refine_steps = 0`` is the
"autoregressive only" ablation: a single rolled-out trajectory, its first action, no diffusion and no critic.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core import CFGDenoiser, CountingDenoiser, NetworkDenoiser, VPDiscrete
from ...nets import UNet
from .maze_data import MazeDataset
from .planner_diffuser import train_inverse_dynamics
from .planner_nets import (ARGenerator, Critic, InverseDynamics, LimitsNormalizer, ddpm_posterior_step, fit,
                           inpaint_first_state)

TRAJECTORY_DEFAULTS = {"horizon": 32, "n_diffusion_steps": 100, "beta_schedule": "linear", "base_channels": 16,
                       "channel_mult": [1, 2, 4], "refine_steps": 5, "n_candidates": 32, "cfg_scale": 1.2,
                       "n_return_bins": 8, "label_dropout": 0.25, "target_return": 1.0, "state_dim": 4,
                       "action_dim": 2}


class TrajectoryDiffuserPlanner(nn.Module):
    """Generator + UNet planner + inverse dynamics + critic + normaliser; ``config`` rebuilds it.
    ``config["method"]`` is ``"trajectory_diffuser"`` or ``"autoregressive"`` (refine_steps = 0)."""

    def __init__(self, config: dict):
        super().__init__()
        method = config.get("method", "trajectory_diffuser")
        if method not in ("trajectory_diffuser", "autoregressive"):
            raise ValueError(f"method must be 'trajectory_diffuser' or 'autoregressive'; got {method!r}")
        self.config = {**TRAJECTORY_DEFAULTS, **config, "method": method}
        c = self.config
        if method == "autoregressive":
            c["refine_steps"] = 0
        if not 0 <= c["refine_steps"] <= c["n_diffusion_steps"]:
            raise ValueError(f"refine_steps must be in [0, {c['n_diffusion_steps']}]; got {c['refine_steps']}")
        self.normalizer = LimitsNormalizer(torch.zeros(c["state_dim"]), torch.ones(c["state_dim"]))
        self.generator = ARGenerator(c["state_dim"])
        self.unet = UNet(in_channels=c["state_dim"], base_channels=c["base_channels"],
                         channel_mult=tuple(c["channel_mult"]), num_res_blocks=1, attention_resolutions=(), dims=1,
                         image_size=c["horizon"], num_classes=c["n_return_bins"])
        self.inverse_dynamics = InverseDynamics(c["state_dim"], c["action_dim"])
        self.critic = Critic(c["state_dim"], c["action_dim"])
        self.register_buffer("bin_edges", torch.linspace(0, 1, c["n_return_bins"] + 1)[1:-1])
        self.schedule = VPDiscrete.named(c["beta_schedule"], c["n_diffusion_steps"])

    def return_bin(self, rtg_normalised: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(rtg_normalised.contiguous(), self.bin_edges)

    @torch.no_grad()
    def plan(self, observation, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """One decision: (action (action_dim,), info with the chosen normalised plan and NFE counts)."""
        c = self.config
        k = c["n_candidates"] if c["refine_steps"] > 0 else 1  # identical AR candidates need no repeats unrefined
        s0 = self.normalizer.normalize(torch.as_tensor(observation, dtype=torch.float32).reshape(1, -1)).expand(k, -1)
        target = torch.full((k,), float(c["target_return"]))
        states, ar_calls = self.generator.rollout(s0, target, c["horizon"])
        x = inpaint_first_state(states.transpose(1, 2), s0)  # tau_0, (k, C, H)
        denoiser = CountingDenoiser(CFGDenoiser(NetworkDenoiser(self.unet, self.schedule, "eps"), c["cfg_scale"]))
        labels = self.return_bin(target)
        for n in range(c["refine_steps"] - 1, -1, -1):
            x0_hat = denoiser(x, self.schedule.t_of_timestep(n), class_labels=labels).clamp(-1, 1)
            x = inpaint_first_state(ddpm_posterior_step(self.schedule, n, x, x0_hat, generator), s0)
        actions = self.inverse_dynamics(x[:, :, 0], x[:, :, 1]).clamp(-1, 1)
        nfe = {"denoiser": denoiser.calls, "value": 0, "autoregressive": ar_calls, "inverse_dynamics": 1,
               "critic": 0}
        choice = 0
        if c["refine_steps"] > 0:
            q = self.critic(s0, actions) * c["rtg_scale"]
            nfe["critic"] = 1
            choice = int(torch.multinomial(torch.softmax(q, 0), 1, generator=generator))
        nfe["total"] = sum(nfe.values())
        return actions[choice], {"plan": x[choice].T, "nfe": nfe}


def train_trajectory_diffuser(dataset: MazeDataset, *, steps: int = 2000, seed: int = 0, progress: bool = False,
                              batch_size: int = 64, lr: float = 1e-3, method: str = "trajectory_diffuser",
                              **config) -> TrajectoryDiffuserPlanner:
    """Train the parts on ``dataset`` for ``steps`` Adam steps each (independent MSE losses, so training them one
    after another equals the paper's joint training up to batch order):

    * generator: teacher-forced || G(tau_{<k}, R_{<k}) - (s_k, R_k) ||^2 over windows of length H;
    * planner UNet: || eps_theta(x_n, n, bin(R)) - eps ||^2, eps[:, :, 0] = 0 so x_n keeps the clean s_0, label
      replaced by the null class with probability ``label_dropout`` (CFG training);
    * inverse dynamics; critic || Q(s_t, a_t) - R_t / R_max ||^2 on all transitions.
    ``method="autoregressive"`` skips the UNet and the critic (the ablation never calls them).
    """
    torch.manual_seed(seed)  # parameter initialisation only; data and noise use explicit generators
    model = TrajectoryDiffuserPlanner({**config, "method": method})
    c = model.config
    lo, hi = dataset.state_limits()
    model.normalizer = LimitsNormalizer(lo, hi)
    win = dataset.windows(c["horizon"])
    states = model.normalizer.normalize(win["states"])  # (N, H, C)
    rtg_scale = float(win["rtg_seq"].max().clamp_min(1e-6))
    model.config["rtg_scale"] = rtg_scale
    rtg_seq = win["rtg_seq"] / rtg_scale
    quantiles = torch.linspace(0, 1, c["n_return_bins"] + 1)[1:-1]
    model.bin_edges = torch.quantile(rtg_seq[:, 0], quantiles)
    labels_all = model.return_bin(rtg_seq[:, 0])
    x0_all = states.transpose(1, 2).contiguous()
    abar = model.schedule.alphas_cumprod.to(torch.float32)

    def generator_loss(idx, gen):
        tokens = torch.cat([states[idx], rtg_seq[idx][..., None]], -1)
        return ((model.generator(states[idx], rtg_seq[idx]) - tokens[:, 1:]) ** 2).mean()

    def planner_loss(idx, gen):
        x0 = x0_all[idx]
        n = torch.randint(c["n_diffusion_steps"], (len(idx),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        eps[:, :, 0] = 0
        a = abar[n].sqrt()[:, None, None]
        x_n = a * x0 + (1 - a**2).sqrt() * eps
        drop = torch.rand(len(idx), generator=gen) < c["label_dropout"]
        labels = torch.where(drop, torch.full_like(labels_all[idx], c["n_return_bins"]), labels_all[idx])
        pred = model.unet(x_n, n.float(), labels)
        return ((pred - eps)[:, :, 1:] ** 2).mean()

    fit(model.generator, generator_loss, len(states), steps=steps, batch_size=batch_size, lr=1e-3, seed=seed,
        progress=progress, desc="AR generator")
    train_inverse_dynamics(model.inverse_dynamics, model.normalizer, dataset, steps=steps, seed=seed + 2,
                           progress=progress)
    if method == "trajectory_diffuser":
        fit(model.unet, planner_loss, len(states), steps=steps, batch_size=batch_size, lr=lr, seed=seed + 1,
            progress=progress, desc="planner UNet")
        tr = dataset.transitions()
        s, a, target = model.normalizer.normalize(tr["s"]), tr["a"], tr["rtg"] / rtg_scale
        fit(model.critic, lambda idx, gen: ((model.critic(s[idx], a[idx]) - target[idx]) ** 2).mean(), len(a),
            steps=steps, batch_size=256, lr=1e-3, seed=seed + 3, progress=progress, desc="critic")
    return model
