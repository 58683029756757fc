"""FIND: a learned initial-noise distribution trained by policy optimisation.

Chen et al. 2024, "FIND: Fine-tuning Initial Noise Distribution with Policy Optimization for Diffusion
Models" (ACM MM 2024, arXiv 2407.19453). The diffusion model and the sampler stay frozen; only a diagonal
Gaussian policy pi_theta = N(mu, diag(std^2)) over the initial noise x_T is learned, starting at N(0, I).
Generation is a one-step MDP: action x_T ~ pi_theta, a fixed deterministic sampler (DDIM, no gradients)
maps it to x_0, and the reward r(x_0) is observed. Per iteration (batch of B actions):

    log pi(x)  = mean over elements of log N(x; mu, std^2)                   (as in the reference code)
    A          = r - b,   b = V(mu, std) (learned), a running mean of r, or 0
    rho        = exp(log pi_theta(x) - log pi_ref(x))
    L_policy   = -w_r * mean_B[A * clamp(rho, 1 - eps, 1 + eps)]   pi_ref = pi_0 = N(0, I)   ("prior")
               = -w_r * mean_B[min(rho A, clamp(rho, 1 - eps, 1 + eps) A)]
                                                                 pi_ref = the sampling policy ("previous", PPO)
               = -w_r * mean_B[A * log pi_theta(x)]                                  (plain REINFORCE, "none")
    L_reg      = w_kl * mean((mu - 0)^2 + (std - 1)^2)     ("l2", the reference code's "KL")
               = w_kl * mean(KL(N(mu, std^2) || N(0, 1)))  ("kl", per element)

Clipping against pi_0 (the reference code stores the old mean/std once, before training) bounds drift
from the prior: once a sample's ratio leaves [1 - eps, 1 + eps] the hard clamp stops its gradient.
NFE per iteration: B * (sampler steps); the policy itself costs nothing.

Shapes: the policy has ``shape`` (one sample, e.g. (2,) or (1, 8, 8)); ``sample(n)`` gives (n, *shape).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..core import make_grid
from ..core.schedules import VPDiscrete
from ..samplers import sample_ddim

BASELINES = ("value", "running_mean", "none")
CLIP_MODES = ("prior", "previous", "none")
REGULARIZERS = ("l2", "kl")


@dataclass
class FINDConfig:
    """Options of :func:`train_find` (defaults follow the reference code where it applies at toy scale:
    clamp [0.8, 1.2] against pi_0, L2 regulariser on (mu, std - 1), value baseline, AdamW)."""

    iterations: int = 60
    batch_size: int = 64
    lr: float = 0.05
    reward_weight: float = 1.0
    kl_weight: float = 0.01
    regularizer: str = "l2"
    clip: str = "prior"
    clip_eps: float = 0.2
    ppo_epochs: int = 1
    baseline: str = "value"
    baseline_momentum: float = 0.9
    value_lr: float = 0.01
    value_hidden: int = 64
    grad_clip: float | None = None
    std_min: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")

        def nonneg(name, strict=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0 or (strict and v == 0):
                raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} 0, got {v!r}")

        for name in ("iterations", "batch_size", "ppo_epochs", "value_hidden"):
            positive_int(name)
        for name in ("lr", "value_lr", "std_min"):
            nonneg(name, strict=True)
        for name in ("reward_weight", "kl_weight"):
            nonneg(name)
        if self.regularizer not in REGULARIZERS:
            raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {self.regularizer!r}")
        if self.clip not in CLIP_MODES:
            raise ValueError(f"clip must be one of {CLIP_MODES}, got {self.clip!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if isinstance(self.clip_eps, bool) or not isinstance(self.clip_eps, (int, float)) \
                or not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps must be in (0, 1), got {self.clip_eps!r}")
        if isinstance(self.baseline_momentum, bool) or not isinstance(self.baseline_momentum, (int, float)) \
                or not 0 <= self.baseline_momentum < 1:
            raise ValueError(f"baseline_momentum must be in [0, 1), got {self.baseline_momentum!r}")
        if self.grad_clip is not None:
            nonneg("grad_clip", strict=True)
        if self.ppo_epochs > 1 and self.clip != "previous":
            raise ValueError(f"ppo_epochs > 1 needs clip='previous' (got clip={self.clip!r}): re-using a "
                             "batch is only valid with a ratio to the sampling policy")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class NoisePolicy(nn.Module):
    """Diagonal Gaussian N(mean, diag(std^2)) over x_T in standard-normal units; init N(0, I)."""

    def __init__(self, shape, *, std_min: float = 1e-4):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        if not self.shape or any(s < 1 for s in self.shape):
            raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape!r}")
        self.mean = nn.Parameter(torch.zeros(self.shape))
        self.log_std = nn.Parameter(torch.zeros(self.shape))
        self.std_min = float(std_min)

    @property
    def std(self) -> torch.Tensor:
        return self.log_std.exp().clamp(min=self.std_min)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, *shape) draws, detached (actions, not reparametrised samples)."""
        z = torch.randn((n, *self.shape), generator=generator)
        with torch.no_grad():
            return self.mean + self.std * z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) mean over elements of the Normal log-density (the reference code's normalisation)."""
        return _normal_log_prob(x, self.mean, self.std).flatten(1).mean(1)

    def kl_to_prior(self) -> torch.Tensor:
        """Total KL(pi || N(0, I)) in nats, summed over elements (a detached scalar)."""
        with torch.no_grad():
            return _kl_elements(self.mean, self.std).sum()


def _normal_log_prob(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)


def _kl_elements(mean, std):
    return 0.5 * (std**2 + mean**2 - 1) - torch.log(std)


class _ValueNet(nn.Module):
    """V(mu, std): MLP over the flattened [mu; std] (the reference's ValueInit, without the text embedding)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, policy: NoisePolicy) -> torch.Tensor:
        return self.net(torch.cat([policy.mean.detach().flatten(), policy.std.detach().flatten()]))[0]


def ddim_decoder(denoiser, *, steps: int = 10, cond: dict | None = None, batch_size: int = 512
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """x_T (standard-normal units) -> x_0 by deterministic DDIM (eta = 0) under ``no_grad``.

    Grid: trailing spacing for discrete VP schedules, log-SNR to t = 0 otherwise. x_T is scaled by the
    prior's std (``prior_sample``'s scale) so that the policy N(0, I) is the model's own prior. ``cond``
    values with a leading batch dimension of size 1 are expanded to the batch. NFE = steps per sample.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    sched = denoiser.schedule
    ts = make_grid("trailing", sched, steps) if isinstance(sched, VPDiscrete) else \
        make_grid("logsnr", sched, steps, t_end=0.0)
    scale = (float(sched.alpha(sched.t_max)) ** 2 + float(sched.sigma(sched.t_max)) ** 2) ** 0.5
    cond = dict(cond or {})

    @torch.no_grad()
    def decode(x_T: torch.Tensor) -> torch.Tensor:
        out = []
        for s in range(0, x_T.shape[0], batch_size):
            xb = x_T[s : s + batch_size] * scale
            c = {k: (v.expand(xb.shape[0], *v.shape[1:]) if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == 1
                     else v) for k, v in cond.items()}
            out.append(sample_ddim(denoiser, xb, ts, cond=c))
        return torch.cat(out)

    decode.nfe_per_sample = steps
    return decode


def mode_hit_reward(center, radius: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """r(x) = 1 if ||x - center|| <= radius else 0, for (N, D) samples (e.g. one mode of the 2-D ring)."""
    center = torch.as_tensor(center, dtype=torch.float32).flatten()
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0:
        raise ValueError(f"radius must be a positive number, got {radius!r}")

    def reward(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - center).norm(dim=-1) <= radius).float()

    return reward


def class_prob_reward(classifier, target: int, *, clip: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """r(x) = p_classifier(target | x) for digits (N, 1, 8, 8); samples are clipped to [-1, 1] first."""
    num_classes = classifier.head.out_features
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < num_classes:
        raise ValueError(f"target must be a class index in [0, {num_classes}), got {target!r}")

    @torch.no_grad()
    def reward(x: torch.Tensor) -> torch.Tensor:
        classifier.eval()
        return classifier(x.clamp(-1, 1) if clip else x).softmax(-1)[:, target]

    return reward


def _regularizer(policy: NoisePolicy, kind: str) -> torch.Tensor:
    if kind == "l2":
        return (policy.mean**2 + (policy.std - 1) ** 2).mean()
    return _kl_elements(policy.mean, policy.std).mean()


def train_find(decode: Callable[[torch.Tensor], torch.Tensor], reward_fn: Callable[[torch.Tensor], torch.Tensor],
               shape, config: FINDConfig | None = None, *, callback=None) -> tuple[NoisePolicy, dict]:
    """Train a FIND noise policy (see the module docstring for the losses).

    Args:
        decode: x_T (B, *shape) -> x_0, fixed and deterministic (e.g. :func:`ddim_decoder`); no gradients.
        reward_fn: x_0 -> (B,) rewards.
        shape: the shape of one x_T.
        config: :class:`FINDConfig`; the run is deterministic given ``config.seed``.
        callback: optional, called with a dict after every iteration.

    Returns:
        (policy, history) with per-iteration lists ``reward`` (mean batch reward of the rollout policy),
        ``baseline``, ``kl_to_prior`` (total nats, after the update), ``std_mean``, ``mean_norm``,
        ``clip_fraction`` and ``nfe`` (cumulative decoder calls x steps, when the decoder declares it).
    """
    cfg = config or FINDConfig()
    if not isinstance(cfg, FINDConfig):
        raise ValueError(f"config must be a FINDConfig, got {type(cfg).__name__}")
    gen = torch.Generator().manual_seed(cfg.seed)
    policy = NoisePolicy(shape, std_min=cfg.std_min)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    value = v_opt = None
    if cfg.baseline == "value":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            value = _ValueNet(policy.mean.numel(), cfg.value_hidden)
        v_opt = torch.optim.Adam(value.parameters(), lr=cfg.value_lr)
    running = None
    ref_mean, ref_std = torch.zeros(policy.shape), torch.ones(policy.shape)
    nfe_per = getattr(decode, "nfe_per_sample", 1)
    hist = {k: [] for k in ("reward", "baseline", "kl_to_prior", "std_mean", "mean_norm", "clip_fraction", "nfe")}
    for it in range(cfg.iterations):
        x_T = policy.sample(cfg.batch_size, gen)
        r = torch.as_tensor(reward_fn(decode(x_T)), dtype=torch.float32).detach().flatten()
        if r.shape != (cfg.batch_size,):
            raise ValueError(f"reward_fn must return ({cfg.batch_size},) rewards, got shape {tuple(r.shape)}")
        if cfg.baseline == "value":
            b = value(policy)
            v_opt.zero_grad()
            ((b - r) ** 2).mean().backward()
            v_opt.step()
            b = float(b.detach())
        elif cfg.baseline == "running_mean":
            b = 0.0 if running is None else running
            mean_r = float(r.mean())
            m = cfg.baseline_momentum
            running = mean_r if running is None else m * running + (1 - m) * mean_r
        else:
            b = 0.0
        adv = r - b
        with torch.no_grad():
            old_lp = policy.log_prob(x_T) if cfg.clip == "previous" else None
            prior_lp = _normal_log_prob(x_T, ref_mean, ref_std).flatten(1).mean(1)
        clipped = 0.0
        for _ in range(cfg.ppo_epochs):
            lp = policy.log_prob(x_T)
            lo, hi = 1 - cfg.clip_eps, 1 + cfg.clip_eps
            if cfg.clip == "prior":
                rho = torch.exp(lp - prior_lp)
                pg = -(adv * rho.clamp(lo, hi)).mean()
                clipped = float(((rho < lo) | (rho > hi)).float().mean())
            elif cfg.clip == "previous":
                rho = torch.exp(lp - old_lp)
                pg = -torch.minimum(rho * adv, rho.clamp(lo, hi) * adv).mean()
                clipped = float(((rho < lo) | (rho > hi)).float().mean())
            else:
                pg = -(adv * lp).mean()
            loss = cfg.reward_weight * pg + cfg.kl_weight * _regularizer(policy, cfg.regularizer)
            opt.zero_grad()
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            opt.step()
        with torch.no_grad():
            hist["reward"].append(float(r.mean()))
            hist["baseline"].append(b)
            hist["kl_to_prior"].append(float(policy.kl_to_prior()))
            hist["std_mean"].append(float(policy.std.mean()))
            hist["mean_norm"].append(float(policy.mean.norm()))
            hist["clip_fraction"].append(clipped)
            hist["nfe"].append((it + 1) * cfg.batch_size * nfe_per)
        if callback is not None:
            callback({"iteration": it, **{k: v[-1] for k, v in hist.items()}})
    return policy, hist


@torch.no_grad()
def evaluate_policy(policy: NoisePolicy | None, decode, reward_fn, *, n: int, seed: int = 0, shape=None
                    ) -> tuple[float, torch.Tensor]:
    """(mean reward, x_0 samples) of ``n`` draws from ``policy`` (None: the N(0, I) prior; needs ``shape``)."""
    gen = torch.Generator().manual_seed(seed)
    if policy is None:
        if shape is None:
            raise ValueError("shape is required when policy is None (the N(0, I) baseline)")
        x_T = torch.randn((n, *tuple(shape)), generator=gen)
    else:
        x_T = policy.sample(n, gen)
    x0 = decode(x_T)
    return float(torch.as_tensor(reward_fn(x0)).float().mean()), x0
