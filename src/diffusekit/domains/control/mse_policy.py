"""The regression baseline of Diffusion Policy's multimodality argument: an MLP trained with mean-squared error.

``MSEPolicy`` maps the observation window O (n_obs, obs_dim) to an action chunk A_hat (H, act_dim) and is trained
with L = mean ||A_hat(O) - A||^2 on the same chunks, windows and receding horizon as Diffusion Policy, so only the
loss differs. The minimiser of L is the conditional mean E[A | O]; where the demonstrations split (pass left or
right of an obstacle) the mean heads between the modes, into the obstacle (Chi et al. 2023, arXiv 2303.04137,
Sec. 4 and Fig. 3: "LSTM-GMM and IBC ... MSE-based policies average modes").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .diffusion_policy import ChunkPolicyConfig, SavedChunkPolicy, fit, read_policy_files

__all__ = ["ChunkMLP", "MSEPolicy", "MSEPolicyConfig", "train_mse_policy"]


class ChunkMLP(nn.Module):
    """A_hat = MLP(flatten(O)) reshaped to (B, H, act_dim); ``depth`` hidden layers of ``width`` with Mish."""

    def __init__(self, obs_cond_dim: int, act_dim: int, horizon: int, width: int = 256, depth: int = 3):
        super().__init__()
        self.config = {"obs_cond_dim": obs_cond_dim, "act_dim": act_dim, "horizon": horizon, "width": width,
                       "depth": depth}
        layers, d = [], obs_cond_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.Mish()]
            d = width
        layers.append(nn.Linear(d, horizon * act_dim))
        self.mlp = nn.Sequential(*layers)
        self.act_dim, self.horizon = act_dim, horizon

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mlp(obs.reshape(obs.shape[0], -1)).reshape(-1, self.horizon, self.act_dim)


def mse_loss(net: nn.Module, batch, generator=None) -> torch.Tensor:
    """Per-example mean squared error mean_j (A_hat(O)_j - A_j)^2 for batch (chunks (B, H, A), windows)."""
    chunks, windows = batch
    return ((net(windows) - chunks) ** 2).flatten(1).mean(1)


@dataclass
class MSEPolicyConfig(ChunkPolicyConfig):
    """Settings of the MSE baseline (same data layout and optimiser as ``DiffusionPolicyConfig``)."""

    width: int = 256
    depth: int = 3
    batch_size: int = 256


class MSEPolicy(SavedChunkPolicy):
    """Deterministic chunk regressor: ``act(windows, generators) -> chunks`` (generators unused)."""

    method = "mse"

    def __init__(self, net: ChunkMLP, *, n_obs: int, n_action: int, env_id: str | None = None):
        self.net, self.n_obs, self.n_action, self.env_id = net.eval(), n_obs, n_action, env_id
        self.horizon = net.horizon

    @torch.no_grad()
    def act(self, windows: np.ndarray, generators=None) -> np.ndarray:
        return self.net(torch.as_tensor(windows).float()).numpy()

    def config(self) -> dict:
        return {"method": self.method, "env_id": self.env_id, "net": self.net.config, "n_obs": self.n_obs,
                "n_action": self.n_action}

    @classmethod
    def load(cls, folder) -> "MSEPolicy":
        state, cfg = read_policy_files(folder)
        net = ChunkMLP(**cfg["net"])
        net.load_state_dict(state)
        return cls(net, n_obs=cfg["n_obs"], n_action=cfg["n_action"], env_id=cfg.get("env_id"))


def train_mse_policy(windows: np.ndarray, chunks: np.ndarray, cfg: MSEPolicyConfig | None = None, *,
                     env_id: str | None = None, progress: bool = False) -> MSEPolicy:
    """Fit ``ChunkMLP`` by MSE on (windows (N, n_obs, obs_dim), chunks (N, H, act_dim)) with the shared Trainer."""
    cfg = cfg or MSEPolicyConfig()
    torch.manual_seed(cfg.seed)  # parameter init only
    n, n_obs, obs_dim = windows.shape
    net = ChunkMLP(n_obs * obs_dim, chunks.shape[2], chunks.shape[1], cfg.width, cfg.depth)
    data = (torch.as_tensor(chunks), torch.as_tensor(windows).reshape(n, -1))
    return MSEPolicy(fit(net, mse_loss, data, cfg, progress), n_obs=n_obs, n_action=cfg.n_action, env_id=env_id)
