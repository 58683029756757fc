"""DiffusionDrive: truncated diffusion from an anchored Gaussian mixture (Liao et al., CVPR 2025, arXiv 2411.15139).

What "truncated" means here (the semantics users of the official code asked about, hustvl/DiffusionDrive
#50, #55, #3). The schedule is the 1000-step scaled-linear DDPM chain (beta from 1e-4 to 0.02, diffusers'
``DDIMScheduler`` defaults), with integer timestep n at schedule time t = (n + 1)/1000 (``VPDiscrete``).

* **Prior.** Not N(0, I): the anchored Gaussian mixture (1/K) sum_k N(sqrt(abar_n) a_k, (1 - abar_n) I) over the
  K k-means anchors a_k (normalised to [-1, 1] per axis). Every anchor is noised, every one becomes a query.
* **Training** draws n ~ U{0, ..., 49} only (t <= 0.05): x_n^k = sqrt(abar_n) a_k + sqrt(1 - abar_n) eps. The
  noise std there is 0.010 to 0.094 in normalised units (0.032 at n = 8), i.e. about 0.3 m to 3.1 m along x
  and 0.04 m to 0.4 m along y on our scenes: the "diffusion" is a small perturbation around each anchor, and
  the decoder learns to move an anchor to the ground truth (offsets) and to say which anchor is right
  (classification).
* **Loss** per decoder layer: 10 x sigmoid focal loss (gamma 2, alpha 0.25) on the one-hot of the anchor
  closest to the ground truth (mean waypoint L2) + 8 x L1 between that anchor's output and the ground truth.
  The decoder predicts the sample (x0), never eps.
* **Inference** (official ``forward_test``): noise the anchors to timestep 8, then run diffusers'
  ``DDIMScheduler`` with ``set_timesteps(1000)`` at timesteps [10, 0]. Because 1000 inference steps means a
  step ratio of 1, the two DDIM updates go 10 -> 9 and 0 -> clean: the network is told t = 10 for a sample
  noised to t = 8, and the output is exactly the second call's x0 prediction. ``plan`` reproduces this with our
  ``sample_ddim`` on the grids [t(10), t(9)] and [t(0), 0]. Output: all K trajectories and their scores; the
  plan is the argmax-score one. 2 network calls per plan, whatever K.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...core.denoiser import FunctionDenoiser
from ...core.schedules import VPDiscrete
from ...samplers import sample_ddim
from .drive_anchors import cluster_anchors
from .drive_env import HORIZON
from .drive_nets import CascadeDiffusionDecoder, SceneTensors, denormalise, normalise, trajectory_range

TRUNCATION_STEPS = 50  # training timesteps n in {0, ..., 49} of 1000
INFERENCE_NOISE_STEP = 8  # anchors are noised to timestep 8 at inference
CLS_WEIGHT, REG_WEIGHT = 10.0, 8.0
FOCAL_GAMMA, FOCAL_ALPHA = 2.0, 0.25


def drive_schedule() -> VPDiscrete:
    """The 1000-step scaled-linear VP chain of DiffusionDrive (diffusers DDIMScheduler defaults)."""
    return VPDiscrete.named("scaled_linear", 1000)


def t_of(schedule: VPDiscrete, n) -> torch.Tensor:
    """Schedule time of integer timestep(s) n: t = (n + 1)/N."""
    return schedule.t_of_timestep(torch.as_tensor(n, dtype=torch.float64))


def truncated_forward(anchors: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: VPDiscrete) -> torch.Tensor:
    """Noise every anchor: x_t^k = alpha_t a_k + sigma_t eps^k (DiffusionDrive's truncated forward process from the
    anchored Gaussian mixture, arXiv 2411.15139). anchors (K, T, 2) or (B, K, T, 2) normalised; t (B,) schedule
    times; eps (B, K, T, 2). At t = 0 the sample is the anchor exactly."""
    anchors = anchors.expand_as(eps)
    return schedule.add_noise(anchors, t, eps)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = FOCAL_GAMMA,
                       alpha: float = FOCAL_ALPHA) -> torch.Tensor:
    """Per-element focal loss (Lin et al. 2017, arXiv 1708.02002, eq. 5):
    FL = -alpha_t (1 - p_t)^gamma log p_t, p = sigmoid(z), p_t = p y + (1 - p)(1 - y),
    alpha_t = alpha y + (1 - alpha)(1 - y)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * ce


def closest_anchor(anchors: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(K, T, 2) anchors, (B, T, 2) ground truth -> (B,) index of the anchor with the smallest mean waypoint L2."""
    return torch.linalg.vector_norm(target[:, None] - anchors[None], dim=-1).mean(-1).argmin(1)


def diffusiondrive_loss(trajectories: list, logits: list, target: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Per-example loss (B,) summed over the cascade layers (official ``LossComputer``):
    L = sum_layers 10 mean_k FL(z_k, 1[k = k*]) + 8 mean |tau_{k*} - tau_gt|_1, with k* the anchor closest to
    the ground truth. trajectories: per layer (B, K, T, 2) metres; logits: per layer (B, K)."""
    onehot = F.one_hot(best, logits[0].shape[1]).to(logits[0].dtype)
    rows = torch.arange(len(best))
    total = torch.zeros(len(best))
    for traj, cls in zip(trajectories, logits):
        focal = sigmoid_focal_loss(cls, onehot).mean(1)
        l1 = (traj[rows, best] - target).abs().flatten(1).mean(1)
        total = total + CLS_WEIGHT * focal + REG_WEIGHT * l1
    return total


class DiffusionDrive(torch.nn.Module):
    """Anchors + cascade decoder + truncated schedule. ``config`` (JSON-able) rebuilds it with
    ``load_diffusiondrive(state_dict(), config)``; the anchors (metres) are a buffer in the state."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.decoder = CascadeDiffusionDecoder(config["d"], config["heads"], config["layers"], HORIZON)
        self.register_buffer("anchors", torch.zeros(config["k"], HORIZON, 2))
        self.schedule = drive_schedule()

    @property
    def lo(self):
        return self.config["lo"]

    @property
    def hi(self):
        return self.config["hi"]

    def decode(self, x_norm: torch.Tensor, n: torch.Tensor, scene: SceneTensors):
        """Noisy normalised anchors (B, K, T, 2) at integer timesteps n (B,) -> per-layer trajectories in metres
        and logits. Inputs are clamped to [-1, 1] before de-normalising, as in the official head."""
        points = denormalise(torch.clamp(x_norm, -1, 1), self.lo, self.hi)
        return self.decoder(points, n, scene)


def load_diffusiondrive(state: dict, config: dict) -> DiffusionDrive:
    """Rebuild a trained DiffusionDrive from ``model.state_dict()`` and ``model.config``."""
    model = DiffusionDrive(config)
    model.load_state_dict(state)
    return model.eval()


def train_diffusiondrive(scenes, *, steps: int = 2000, seed: int = 0, progress: bool = False, k: int = 20,
                         batch_size: int = 64, lr: float = 1e-3, d: int = 64, heads: int = 4,
                         layers: int = 2, noise: bool = True) -> DiffusionDrive:
    """Train DiffusionDrive on scenes with expert plans (``drive_env.generate_scenes``).

    Anchors: ``cluster_anchors`` (k-means, K = ``k``) of the expert trajectories. Each step: a batch of scenes,
    n ~ U{0..49}, all K anchors noised (``truncated_forward``), the cascade decoder, ``diffusiondrive_loss``;
    AdamW with cosine decay. Deterministic under ``seed`` (explicit generators).

    ``noise=False`` is an ablation, not the paper's method: the same decoder and loss on the clean anchors
    (t = 0 in training and inference), i.e. anchor classification + offset regression with no diffusion.
    """
    from tqdm import tqdm

    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    experts = np.stack([s.expert for s in scenes])
    if len(experts) < k:
        raise ValueError(f"need at least k={k} scenes to cluster anchors; got {len(experts)}")
    lo, hi = trajectory_range(experts)
    config = {"k": k, "d": d, "heads": heads, "layers": layers, "lo": lo, "hi": hi, "steps": steps, "seed": seed,
              "truncation_steps": TRUNCATION_STEPS if noise else 0,
              "inference_noise_step": INFERENCE_NOISE_STEP if noise else 0}
    torch.manual_seed(seed)  # parameter initialisation only; every training draw has its own generator
    model = DiffusionDrive(config)
    model.anchors.copy_(torch.from_numpy(cluster_anchors(experts, k, seed)).float())
    scene_t = SceneTensors.from_scenes(scenes)
    target = torch.from_numpy(experts).float()
    best_all = closest_anchor(model.anchors, target)
    anchors_norm = normalise(model.anchors, lo, hi)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in tqdm(range(steps), disable=not progress, desc="DiffusionDrive", leave=False):
        idx = torch.randint(len(scenes), (batch_size,), generator=gen)
        n = torch.randint(TRUNCATION_STEPS, (batch_size,), generator=gen)
        eps = torch.randn(batch_size, k, HORIZON, 2, generator=gen)
        t = t_of(model.schedule, n)
        if not noise:
            n, t = torch.zeros_like(n), torch.zeros_like(t)
        x = truncated_forward(anchors_norm, t, eps, model.schedule).float()
        trajs, logits = model.decode(x, n, scene_t.index(idx))
        loss = diffusiondrive_loss(trajs, logits, target[idx], best_all[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def plan_batch(model: DiffusionDrive, scene: SceneTensors, generator: torch.Generator | None = None,
               *, steps: int = 2, trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated 2-step inference for a batch of scenes -> trajectories (B, K, T, 2) metres, scores (B, K).

    x = alpha_8 a + sigma_8 eps (anchors noised to timestep 8), then DDIM (eta = 0, x0 prediction) at the
    official timesteps round(i 20/steps) for i = steps-1..0 ([10, 0] for 2 steps), each stepping to the
    previous integer timestep (diffusers' ``set_timesteps(1000)``) and the last one to clean data. Scores are
    sigmoid(logits) of the final call (the paper picks the argmax). NFE = ``steps``. ``trace``, if a list,
    receives (label, trajectories in metres (B, K, T, 2), scores or None) after the noising and after each step.
    """
    if not 1 <= steps <= 20:
        raise ValueError(f"steps must be between 1 and 20 (distinct timesteps below the truncation); got {steps}")
    sched = model.schedule
    b, k = scene.ego.shape[0], model.config["k"]
    anchors = normalise(model.anchors, model.lo, model.hi)
    eps = torch.randn(b, k, HORIZON, 2, generator=generator)
    noise_step = model.config["inference_noise_step"]
    t_start = t_of(sched, torch.full((b,), noise_step)) if noise_step > 0 else torch.zeros(b, dtype=torch.float64)
    x = truncated_forward(anchors, t_start, eps, sched)  # the clean anchors for the noise-free ablation
    last = {}
    if trace is not None:
        trace.append((f"anchors noised to t={noise_step}", denormalise(x.float(), model.lo, model.hi), None))

    def x0_hat(x_t, t, **_):
        n = sched.timestep_of_t(t).round()
        trajs, logits = model.decode(x_t.float(), n.float(), scene)
        last["logits"] = logits[-1]
        return normalise(trajs[-1], model.lo, model.hi).to(x_t.dtype)

    denoiser = FunctionDenoiser(x0_hat, sched)
    timesteps = (np.arange(steps) * (20 / steps)).round()[::-1].astype(int)
    with torch.no_grad():
        for n in timesteps:
            grid = torch.stack([t_of(sched, n), t_of(sched, n - 1) if n > 0 else torch.zeros((), dtype=torch.float64)])
            x = sample_ddim(denoiser, x, grid)
            if trace is not None:
                label = f"DDIM step at t={n}" + (" (x0 prediction)" if n == 0 else "")
                trace.append((label, denormalise(x.float(), model.lo, model.hi), torch.sigmoid(last["logits"])))
    return denormalise(x.float(), model.lo, model.hi), torch.sigmoid(last["logits"])


def plan(model: DiffusionDrive, scene, generator: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Plans for one ``drive_env.Scene``: trajectories (K, 8, 2) metres and scores (K,) in [0, 1]; the chosen
    plan is ``trajectories[scores.argmax()]``."""
    trajs, scores = plan_batch(model, SceneTensors.from_scenes([scene]), generator)
    return trajs[0].numpy(), scores[0].numpy()
