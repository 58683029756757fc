"""MoDE as a policy: a noise-routed mixture-of-denoising-experts transformer over action chunks.

Reuss et al., "Efficient Diffusion Transformer Policies with Mixture of Expert Denoisers for Multitask Learning"
(ICLR 2025, arXiv 2412.12953). We reuse the MoDE transformer of ``diffusekit.nets.mode`` (SwiGLU experts, top-k
router on the noise embedding only, load balancing, expert fusion) and add what the policy needs:

* ``MoDEPolicyNet``: the action chunk (act_dim channels, horizon H) is cut into H / p tokens; the observation
  window enters through the conditioning vector c = Emb(t) + MLP(flatten(O)) that every block adds before
  attention, while the router still sees the noise embedding Emb(t) alone (the paper's noise-only router), so
  expert choice depends on the noise level only;
* training: EDM (sigma_data 0.5, sigma in [0.001, 80], log-normal sigma sampling as a stand-in for the paper's
  log-logistic one) plus the load-balancing loss, L = L_EDM + 0.01 * L_bal (``methods.mode.MoDELoss``);
* inference: DDIM on the exponential (log-SNR-uniform) sigma grid, 10 steps as in the paper. With
  ``cache_experts`` the router decision at each sampling sigma is precomputed once and the top-2 experts fused
  into one MLP (``MoDE.precompute_experts``), which skips the router and the per-expert dispatch at every call
  and equals the uncached output up to float summation order.

Simplification against the paper: no causal masking, no separate noise token, the observation enters by the
additive conditioning instead of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...core.schedules import VESchedule
from ...methods.mode import BALANCE_WEIGHT, MoDELoss, precompute_for_grid
from ...nets.mode import MoDE
from .diffusion_policy import (NET_BUILDERS, ChunkDiffusionPolicy, ChunkPolicyConfig, ObsConditionedDiffusionLoss,
                               chunk_tensors, fit)

__all__ = ["MoDEPolicyNet", "MoDEPolicy", "MoDEPolicyConfig", "train_mode_policy"]


class MoDEPolicyNet(MoDE):
    """``MoDE`` (dims 1) over action chunks, conditioned on observations: ``forward(x, t, obs)`` with x
    (B, act_dim, H), t (B,) network time and obs (B, obs_cond_dim). Conditioning c = Emb(t) + MLP(obs); router
    input r = Emb(t) (``router_input="noise"``), so ``precompute_experts(times)`` caches by time alone."""

    def __init__(self, obs_cond_dim: int, **mode_kwargs):
        mode_kwargs = {**mode_kwargs, "dims": 1, "router_input": "noise", "num_classes": None}
        mode_kwargs.pop("name", None)
        super().__init__(**mode_kwargs)
        d = self.config["hidden_size"]
        self.obs_embed = nn.Sequential(nn.Linear(obs_cond_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.config = {**self.config, "name": "mode_policy", "obs_cond_dim": obs_cond_dim}
        self._obs = None

    def conditioning(self, t: torch.Tensor, class_labels=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, r) = (Emb(t) + MLP(obs), Emb(t)); without observations (the router's precompute) c = r = Emb(t)."""
        noise = self.time_embed(t, None)
        if self._obs is None:
            return noise, noise
        return noise + self.obs_embed(self._obs.reshape(t.shape[0], -1).to(noise.dtype)), noise

    def forward(self, x: torch.Tensor, t, obs: torch.Tensor) -> torch.Tensor:
        self._obs = obs
        try:
            return super().forward(x, t)
        finally:
            self._obs = None


NET_BUILDERS["mode_policy"] = MoDEPolicyNet


@dataclass
class MoDEPolicyConfig(ChunkPolicyConfig):
    """MoDE-lite settings (paper: 12 layers, d 1024, 4 experts, top-2, DDIM 10 steps; ours CPU-sized)."""

    patch_size: int = 2
    hidden_size: int = 64
    depth: int = 4
    num_heads: int = 4
    num_experts: int = 4
    top_k: int = 2
    balance_weight: float = BALANCE_WEIGHT
    sampler: str = "ddim"
    sample_steps: int = 10
    clip_sample: bool = True
    cache_experts: bool = True


class MoDEPolicy(ChunkDiffusionPolicy):
    """``ChunkDiffusionPolicy`` over a ``MoDEPolicyNet`` whose ``cache_experts`` flag fuses the routed experts
    for the sampling grid before the first call (and again whenever the grid changes)."""

    def __init__(self, net: MoDEPolicyNet, schedule, *, cache_experts: bool = True, **kwargs):
        kwargs.setdefault("method", "mode")
        kwargs.setdefault("grid", "logsnr")
        super().__init__(net, schedule, **kwargs)
        self.cache_experts = bool(cache_experts)
        self._cached_grid = None

    def _inner_denoiser(self):
        den = self.denoiser()
        return getattr(den, "inner", den)

    def set_expert_cache(self, enabled: bool, steps: int | None = None) -> None:
        """Switch the fused-expert cache on (precomputed for the grid of ``steps``) or off."""
        self.cache_experts = bool(enabled)
        self.net.clear_expert_cache()
        self._cached_grid = None
        if enabled:
            ts = self.time_grid(steps)
            precompute_for_grid(self._inner_denoiser(), ts[:-1])  # the times the sampler evaluates (t = 0 never)
            self._cached_grid = ts

    @torch.no_grad()
    def sample_chunks(self, windows: torch.Tensor, generators, *, sampler: str | None = None,
                      steps: int | None = None) -> torch.Tensor:
        if self.cache_experts:
            ts = self.time_grid(steps)
            if self._cached_grid is None or not torch.equal(ts, self._cached_grid):
                self.set_expert_cache(True, steps)
        elif self.net._cache is not None:
            self.net.clear_expert_cache()
        return super().sample_chunks(windows, generators, sampler=sampler, steps=steps)

    def config(self) -> dict:
        return {**super().config(), "cache_experts": self.cache_experts}

    @classmethod
    def load(cls, folder) -> "MoDEPolicy":
        from .diffusion_policy import read_policy_files

        return super().load(folder, cache_experts=read_policy_files(folder)[1].get("cache_experts", True))


def train_mode_policy(windows: np.ndarray, chunks: np.ndarray, cfg: MoDEPolicyConfig | None = None, *,
                      env_id: str | None = None, progress: bool = False) -> MoDEPolicy:
    """Train the MoDE policy with L = L_EDM + balance_weight * L_bal on demonstration chunks (see the module
    docstring); returns the EMA network as a ``MoDEPolicy``."""
    cfg = cfg or MoDEPolicyConfig()
    torch.manual_seed(cfg.seed)  # parameter init only
    n, n_obs, obs_dim = windows.shape
    act_dim = chunks.shape[2]
    net = MoDEPolicyNet(n_obs * obs_dim, in_channels=act_dim, image_size=cfg.horizon, patch_size=cfg.patch_size,
                        hidden_size=cfg.hidden_size, depth=cfg.depth, num_heads=cfg.num_heads,
                        num_experts=cfg.num_experts, top_k=cfg.top_k)
    schedule = VESchedule(sigma_min=0.001, sigma_max=80.0)
    base = ObsConditionedDiffusionLoss(schedule, "edm", weighting="edm", time_sampling="lognormal")
    ema = fit(net, MoDELoss(base, balance_weight=cfg.balance_weight), chunk_tensors(windows, chunks), cfg, progress)
    return MoDEPolicy(ema, schedule, prediction="edm", n_obs=n_obs, horizon=cfg.horizon, n_action=cfg.n_action,
                      act_dim=act_dim, obs_dim=obs_dim, sampler=cfg.sampler, steps=cfg.sample_steps,
                      clip_sample=cfg.clip_sample, env_id=env_id, cache_experts=cfg.cache_experts)
