"""Networks for trajectory planning on the toy driving scenes: a scene-token encoder, DiffusionDrive's cascade
diffusion decoder (Liao et al., CVPR 2025, arXiv 2411.15139, Sec. 3.4) and a vanilla diffusion-policy denoiser
over the 8-waypoint trajectory (Chi et al., RSS 2023, arXiv 2303.04137), both attending to the same scene tokens.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ...nets.embedding import timestep_embedding
from .drive_env import AGENT_FEATURES, EGO_FEATURES, LANE_FEATURES, scene_tokens


class SceneTensors(NamedTuple):
    """Padded scene tokens as tensors (see ``drive_env.scene_tokens``); masks are 1 where a token exists."""

    ego: torch.Tensor  # (B, 3)
    lanes: torch.Tensor  # (B, 3, 3)
    lane_mask: torch.Tensor  # (B, 3)
    agents: torch.Tensor  # (B, A, 4)
    agent_mask: torch.Tensor  # (B, A)

    @classmethod
    def from_scenes(cls, scenes) -> "SceneTensors":
        return cls(*(torch.from_numpy(a) for a in scene_tokens(scenes)))

    def index(self, idx) -> "SceneTensors":
        return SceneTensors(*(t[idx] for t in self))

    def repeat_each(self, k: int) -> "SceneTensors":
        """Each scene repeated k times in a row (B*k scenes)."""
        return SceneTensors(*(t.repeat_interleave(k, 0) for t in self))


def point_embedding(points: torch.Tensor, dim: int, scale: float = 0.05) -> torch.Tensor:
    """Sinusoidal embedding of each coordinate of (..., T, 2) points -> (..., T * 2 * dim), the analogue of
    DiffusionDrive's ``gen_sineembed_for_position`` (DETR-style sine embedding of the noisy waypoints)."""
    flat = points.reshape(-1) * scale * 1000.0 / (2 * math.pi)
    return timestep_embedding(flat, dim).reshape(*points.shape[:-2], -1)


class SceneEncoder(nn.Module):
    """Scene tokens -> (B, 1 + 3 + A, d) features and a (B, N) padding mask (True = absent token).

    One linear embedding per token type (ego, lane, agent) plus a learned type embedding, then one
    self-attention layer so that lane tokens know their cars (the toy stand-in for DiffusionDrive's BEV and
    agent queries from the TransFuser backbone).
    """

    def __init__(self, d: int = 64, heads: int = 4):
        super().__init__()
        self.ego = nn.Linear(EGO_FEATURES, d)
        self.lane = nn.Linear(LANE_FEATURES, d)
        self.agent = nn.Linear(AGENT_FEATURES, d)
        self.type_embedding = nn.Parameter(torch.randn(3, d) * 0.02)
        self.mix = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)

    def forward(self, scene: SceneTensors) -> tuple[torch.Tensor, torch.Tensor]:
        ego = self.ego(scene.ego)[:, None] + self.type_embedding[0]
        lanes = self.lane(scene.lanes) + self.type_embedding[1]
        agents = self.agent(scene.agents) + self.type_embedding[2]
        tokens = torch.cat([ego, lanes, agents], 1)
        present = torch.cat([torch.ones_like(scene.ego[:, :1]), scene.lane_mask, scene.agent_mask], 1)
        pad = present < 0.5
        return self.mix(tokens, src_key_padding_mask=pad), pad


class TimeModulation(nn.Module):
    """FiLM by the diffusion-time embedding: h (1 + scale) + shift (DiffusionDrive's ModulationLayer)."""

    def __init__(self, d: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(d, 2 * d))

    def forward(self, h: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mlp(time_embedding).chunk(2, -1)
        return h * (1 + scale) + shift


class CascadeLayer(nn.Module):
    """One layer of DiffusionDrive's cascade diffusion decoder (arXiv 2411.15139, Sec. 3.4, Fig. 4).

    Anchor queries (B, K, d) cross-attend to the scene tokens (the paper's spatial cross-attention to BEV /
    perspective features and agent/map queries), pass a feed-forward block, are modulated by the time
    embedding, then two heads give per-mode waypoint offsets (added to the noisy points the layer was given)
    and one confidence logit per mode.
    """

    def __init__(self, d: int, heads: int, horizon: int):
        super().__init__()
        self.cross = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.norm2 = nn.LayerNorm(d)
        self.time = TimeModulation(d)
        self.reg = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, horizon * 2))
        self.cls = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.LayerNorm(d), nn.Linear(d, 1))
        self.horizon = horizon

    def forward(self, query, points, tokens, pad, time_embedding):
        """query (B, K, d); points (B, K, T, 2) metres; tokens (B, N, d); pad (B, N) bool; time (B, 1, d)."""
        attended, _ = self.cross(query, tokens, tokens, key_padding_mask=pad)
        h = self.norm1(query + attended)
        h = self.norm2(h + self.ffn(h))
        h = self.time(h, time_embedding)
        offsets = self.reg(h).reshape(*points.shape)
        return points + offsets, self.cls(h).squeeze(-1), h


class CascadeDiffusionDecoder(nn.Module):
    """DiffusionDrive's denoiser: noisy anchors (B, K, T, 2) in metres and the network time -> per-layer
    trajectories (B, K, T, 2) and class logits (B, K). Layer l + 1 starts from layer l's detached trajectories
    (re-embedded and added to its output features), as in the official ``CustomTransformerDecoder``."""

    def __init__(self, d: int = 64, heads: int = 4, layers: int = 2, horizon: int = 8, point_dim: int = 16):
        super().__init__()
        self.encoder = SceneEncoder(d, heads)
        self.point_dim = point_dim
        self.query = nn.Sequential(nn.Linear(horizon * 2 * point_dim, d), nn.ReLU(), nn.Linear(d, d))
        self.time = nn.Sequential(nn.Linear(d, d), nn.Mish(), nn.Linear(d, d))
        self.layers = nn.ModuleList(CascadeLayer(d, heads, horizon) for _ in range(layers))
        self.d = d

    def forward(self, points: torch.Tensor, timestep: torch.Tensor, scene: SceneTensors):
        tokens, pad = self.encoder(scene)
        time_embedding = self.time(timestep_embedding(timestep.float(), self.d))[:, None]
        h = self.query(point_embedding(points, self.point_dim))
        trajectories, logits = [], []
        for i, layer in enumerate(self.layers):
            if i > 0:
                points = points.detach()
                h = h + self.query(point_embedding(points, self.point_dim))
            points, cls, h = layer(h, points, tokens, pad, time_embedding)
            trajectories.append(points)
            logits.append(cls)
        return trajectories, logits


class TrajectoryDenoiserNet(nn.Module):
    """Vanilla diffusion-policy network over one normalised (B, T, 2) trajectory: each waypoint is a token
    (sine embedding + learned position), tokens self-attend, cross-attend to the scene tokens and are FiLM'd by
    the time embedding (the Diffusion Policy transformer variant, arXiv 2303.04137, Sec. 3.1, at toy size).
    Called as ``net(x, t_in, scene=SceneTensors)``; outputs the same shape as x (its prediction type is the
    loss's, eps here)."""

    def __init__(self, d: int = 64, heads: int = 4, layers: int = 2, horizon: int = 8, point_dim: int = 16):
        super().__init__()
        self.encoder = SceneEncoder(d, heads)
        self.point_dim = point_dim
        self.inp = nn.Linear(2 * point_dim + 2, d)
        self.position = nn.Parameter(torch.randn(horizon, d) * 0.02)
        self.time = nn.Sequential(nn.Linear(d, d), nn.Mish(), nn.Linear(d, d))
        self.self_attn = nn.ModuleList(nn.MultiheadAttention(d, heads, batch_first=True) for _ in range(layers))
        self.cross = nn.ModuleList(nn.MultiheadAttention(d, heads, batch_first=True) for _ in range(layers))
        self.ffn = nn.ModuleList(nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
                                 for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3 * layers))
        self.mod = nn.ModuleList(TimeModulation(d) for _ in range(layers))
        self.out = nn.Linear(d, 2)
        self.d = d

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, scene: SceneTensors) -> torch.Tensor:
        tokens, pad = self.encoder(scene)
        time_embedding = self.time(timestep_embedding(t.float().reshape(-1).expand(x.shape[0]), self.d))[:, None]
        emb = point_embedding(x[..., None, :], self.point_dim, scale=1.0).reshape(*x.shape[:2], -1)
        h = self.inp(torch.cat([emb, x], -1)) + self.position
        for i in range(len(self.cross)):
            n1, n2, n3 = self.norms[3 * i: 3 * i + 3]
            h = n1(h + self.self_attn[i](h, h, h)[0])
            h = n2(h + self.cross[i](h, tokens, tokens, key_padding_mask=pad)[0])
            h = self.mod[i](n3(h + self.ffn[i](h)), time_embedding)
        return self.out(h)


def normalise(points, lo, hi):
    """Per-axis map of metres to [-1, 1]: 2 (p - lo)/(hi - lo) - 1 (DiffusionDrive's ``norm_odo``)."""
    lo, hi = torch.as_tensor(lo, dtype=points.dtype), torch.as_tensor(hi, dtype=points.dtype)
    return 2 * (points - lo) / (hi - lo) - 1


def denormalise(points, lo, hi):
    """Inverse of ``normalise``: (p + 1)(hi - lo)/2 + lo."""
    lo, hi = torch.as_tensor(lo, dtype=points.dtype), torch.as_tensor(hi, dtype=points.dtype)
    return (points + 1) * (hi - lo) / 2 + lo


def trajectory_range(trajectories: np.ndarray, margin: float = 0.1) -> tuple[list, list]:
    """Per-axis (lo, hi) of (N, T, 2) trajectories widened by ``margin`` of the span on each side."""
    lo, hi = trajectories.min((0, 1)), trajectories.max((0, 1))
    span = np.maximum(hi - lo, 1e-3)
    return (lo - margin * span).tolist(), (hi + margin * span).tolist()
