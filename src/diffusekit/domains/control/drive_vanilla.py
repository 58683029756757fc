"""Vanilla diffusion policy over the 8-waypoint trajectory, the baseline of DiffusionDrive's Table 4
(Liao et al., CVPR 2025, arXiv 2411.15139): the trajectory is generated from pure Gaussian noise by a
conditional denoiser (Diffusion Policy, Chi et al., RSS 2023, arXiv 2303.04137: squaredcos_cap_v2 schedule
with 100 training steps, eps prediction, DDIM at inference), conditioned on the same scene tokens as
DiffusionDrive. K plans of a scene are K independent noise draws; there is no scorer, so the "chosen" plan is
the first draw.
"""

from __future__ import annotations

import numpy as np
import torch

from ...core.grids import make_grid
from ...core.schedules import VPDiscrete
from ...methods.thresholding import StaticThresholdDenoiser
from ...samplers import sample
from ...training.losses import DiffusionLoss
from .drive_nets import SceneTensors, TrajectoryDenoiserNet, denormalise, normalise, trajectory_range


class _SceneBound(torch.nn.Module):
    """net(x, t) with the batch's scene tokens bound, so ``DiffusionLoss.loss_at`` can train a conditional net."""

    def __init__(self, net: TrajectoryDenoiserNet, scene: SceneTensors):
        super().__init__()
        self.net, self.scene = net, scene

    def forward(self, x, t):
        return self.net(x, t, scene=self.scene)


class VanillaDrivePolicy(torch.nn.Module):
    """A conditional trajectory diffusion model: ``net`` (eps prediction) on the VP chain ``schedule``;
    trajectories are normalised per axis to [-1, 1] with ``config['lo'/'hi']``."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.net = TrajectoryDenoiserNet(config["d"], config["heads"], config["layers"])
        self.schedule = VPDiscrete.named("squaredcos_cap_v2", config["train_steps"])
        self.loss = DiffusionLoss(self.schedule, "eps")


def train_vanilla_policy(scenes, *, steps: int = 2000, seed: int = 0, progress: bool = False, batch_size: int = 64,
                         lr: float = 1e-3, d: int = 64, heads: int = 4, layers: int = 2,
                         train_steps: int = 100) -> VanillaDrivePolicy:
    """Train the baseline with the standard eps loss E ||eps - eps_theta(alpha_t x0 + sigma_t eps, t, scene)||^2
    (Ho et al. 2020, arXiv 2006.11239, eq. 14) over the whole chain; AdamW, cosine decay, explicit generators."""
    from tqdm import tqdm

    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    experts = np.stack([s.expert for s in scenes])
    lo, hi = trajectory_range(experts)
    config = {"d": d, "heads": heads, "layers": layers, "lo": lo, "hi": hi, "train_steps": train_steps,
              "steps": steps, "seed": seed}
    torch.manual_seed(seed)  # parameter initialisation only
    policy = VanillaDrivePolicy(config)
    scene_t = SceneTensors.from_scenes(scenes)
    x0_all = normalise(torch.from_numpy(experts).float(), lo, hi)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(policy.net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    policy.train()
    for _ in tqdm(range(steps), disable=not progress, desc="vanilla policy", leave=False):
        idx = torch.randint(len(scenes), (batch_size,), generator=gen)
        n = torch.randint(train_steps, (batch_size,), generator=gen)
        t = policy.schedule.t_of_timestep(n.double())
        eps = torch.randn(batch_size, *x0_all.shape[1:], generator=gen)
        loss = policy.loss.loss_at(_SceneBound(policy.net, scene_t.index(idx)), x0_all[idx], t, eps).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return policy.eval()


def vanilla_plan_batch(policy: VanillaDrivePolicy, scene: SceneTensors, generator: torch.Generator | None = None, *,
                       steps: int = 20, k: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """K plans per scene from pure noise: DDIM (eta = 0) with ``steps`` steps on diffusers' "trailing" spacing
    (it starts at the last training step, so 2 steps are not wasted near the data), x0_hat clipped to [-1, 1]
    as Diffusion Policy's ``clip_sample=True`` -> trajectories
    (B, K, T, 2) metres and uniform scores (B, K). NFE = ``steps`` per plan."""
    b = scene.ego.shape[0]
    x = torch.randn(b * k, 8, 2, generator=generator)
    denoiser = StaticThresholdDenoiser(policy.loss.denoiser(policy.net))  # Diffusion Policy's clip_sample=True
    ts = make_grid("trailing", policy.schedule, steps)
    with torch.no_grad():
        x = sample("ddim", denoiser, x, ts, cond={"scene": scene.repeat_each(k)})
    trajs = denormalise(x.float(), policy.config["lo"], policy.config["hi"]).reshape(b, k, 8, 2)
    return trajs, torch.full((b, k), 1.0 / k)
