"""TSDiff (Kollovieh et al., NeurIPS 2023, arXiv 2307.11494): an unconditional DDPM over whole windows
(context + prediction), plus the task-specific conditional diffusion model it is compared with.

* Schedule: discrete VP, T = 100, linear betas 1e-4 .. 0.1 (``TSDIFF_SCHEDULE``; the paper's T = 100 linear
  schedule), eps prediction, loss E ||eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) - eps||^2
  (``training.DiffusionLoss``).
* Backbone: :class:`ResidualDilatedConvNet`, a DiffWave-style stack of gated residual blocks with dilations
  1, 2, 4, ... over the time axis (the "small residual dilated-conv net" option standing in for the paper's S4
  blocks; the receptive field of the default 7 blocks is 255 steps), a learned positional embedding so the net
  knows where the context ends, and optional conditioning channels.
* Conditional model (the paper's task-specific baseline, CSDI-like): the same net gets
  ``cond = [y * m, m]`` (observed values and mask, 2D channels) and is trained on the unobserved entries only:
  L = sum((1 - m) (eps_theta(x_t, t, cond) - eps)^2) / sum(1 - m). At sampling the observed entries are
  replaced by y after every step. Trained per mask scenario (forecasting, RM, BM-B, BM-E).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ...core import NetworkDenoiser, VPDiscrete
from ...nets.embedding import timestep_embedding
from ...training import DiffusionLoss, TrainConfig, Trainer

TSDIFF_SCHEDULE = {"name": "vp_discrete", "beta_schedule": "linear", "num_train_timesteps": 100,
                   "beta_start": 1e-4, "beta_end": 0.1}


def tsdiff_schedule() -> VPDiscrete:
    """The paper's T = 100 linear-beta DDPM schedule (abar_T = 0.0062, so x_T is nearly pure noise)."""
    return VPDiscrete.named("linear", 100, beta_start=1e-4, beta_end=0.1)


class _GatedResidualBlock(nn.Module):
    """h + Linear(emb) -> dilated conv (2C) [+ 1x1 cond conv] -> tanh(a) sigmoid(b) -> 1x1 conv -> (residual, skip);
    residual out (h + r)/sqrt(2) (Kong et al. 2021, DiffWave, arXiv 2009.09761, Fig. 2)."""

    def __init__(self, hidden: int, emb_dim: int, dilation: int, cond_channels: int):
        super().__init__()
        self.emb = nn.Linear(emb_dim, hidden)
        self.conv = nn.Conv1d(hidden, 2 * hidden, 3, padding=dilation, dilation=dilation)
        self.cond = nn.Conv1d(cond_channels, 2 * hidden, 1) if cond_channels else None
        self.out = nn.Conv1d(hidden, 2 * hidden, 1)

    def forward(self, h, emb, cond):
        """h (B, C, L), emb (B, E), cond (B, K, L) or None -> (residual output, skip), both (B, C, L)."""
        y = self.conv(h + self.emb(emb)[..., None])
        if self.cond is not None:
            y = y + self.cond(cond)
        a, b = y.chunk(2, dim=1)
        res, skip = self.out(torch.tanh(a) * torch.sigmoid(b)).chunk(2, dim=1)
        return (h + res) / math.sqrt(2.0), skip


class ResidualDilatedConvNet(nn.Module):
    """eps_theta(x, t[, cond]) for windows x (B, D, L), t (B,) network time, cond (B, cond_channels, L) or None.

    in 1x1 conv + positional embedding (hidden, L) -> ``num_blocks`` gated residual blocks with dilation
    2^(i mod 8) -> sum of skips / sqrt(num_blocks) -> SiLU -> 1x1 conv -> SiLU -> zero-initialised 1x1 conv (D).
    ``config`` holds the constructor arguments (JSON).
    """

    def __init__(self, channels: int = 1, length: int = 120, hidden: int = 64, num_blocks: int = 7,
                 cond_channels: int = 0, emb_dim: int = 128):
        super().__init__()
        self.config = {"name": "tsdiff_resconv", "channels": channels, "length": length, "hidden": hidden,
                       "num_blocks": num_blocks, "cond_channels": cond_channels, "emb_dim": emb_dim}
        self.emb_dim = emb_dim
        self.inp = nn.Conv1d(channels, hidden, 1)
        self.pos = nn.Parameter(torch.zeros(1, hidden, length))
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU())
        self.blocks = nn.ModuleList(_GatedResidualBlock(hidden, emb_dim, 2 ** (i % 8), cond_channels)
                                    for i in range(num_blocks))
        self.head = nn.Sequential(nn.SiLU(), nn.Conv1d(hidden, hidden, 1), nn.SiLU(), nn.Conv1d(hidden, channels, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """eps prediction (B, D, L) for x (B, D, L), network time t (B,) or scalar, cond (B, K, L) or None."""
        if x.shape[-1] != self.pos.shape[-1]:
            raise ValueError(f"window length {x.shape[-1]} differs from the net's length {self.pos.shape[-1]}")
        emb = self.time_mlp(timestep_embedding(t.reshape(-1).expand(x.shape[0]).to(x.dtype), self.emb_dim))
        h = self.inp(x) + self.pos
        skips = 0.0
        for block in self.blocks:
            h, skip = block(h, emb, cond)
            skips = skips + skip
        return self.head(skips / math.sqrt(len(self.blocks)))


@dataclasses.dataclass
class TSDiffConfig:
    """Model and training settings (the paper: hidden 64, lr 1e-3, batch 64, grad clip 0.5)."""

    hidden: int = 64
    num_blocks: int = 7
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    grad_clip: float = 0.5
    ema_decay: float | None = 0.995
    seed: int = 0


def _net(channels: int, length: int, cfg: TSDiffConfig, cond_channels: int = 0) -> ResidualDilatedConvNet:
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)  # parameter init only; the global state is restored below
    net = ResidualDilatedConvNet(channels, length, cfg.hidden, cfg.num_blocks, cond_channels)
    torch.random.set_rng_state(gen_state)
    return net


def _fit(net, loss, data, cfg: TSDiffConfig, progress: bool):
    tc = TrainConfig(steps=cfg.steps, batch_size=min(cfg.batch_size, data[0].shape[0]), lr=cfg.lr,
                     warmup_steps=min(100, cfg.steps // 10), grad_clip=cfg.grad_clip, ema_decay=cfg.ema_decay,
                     seed=cfg.seed, progress=progress, log_every=10**9)
    trainer = Trainer(net, loss, data, tc)
    history = trainer.fit()
    return (trainer.ema_model or trainer.model).eval().requires_grad_(False), history


def train_tsdiff(windows: torch.Tensor, cfg: TSDiffConfig | None = None, *, progress: bool = False
                 ) -> tuple[NetworkDenoiser, dict]:
    """Train the unconditional TSDiff model on scaled windows (N, D, L) with the eps-loss of DDPM
    (Ho et al. 2020, arXiv 2006.11239; TSDiff Sec. 3). Returns (denoiser, training history)."""
    cfg = cfg or TSDiffConfig()
    windows = torch.as_tensor(windows, dtype=torch.float32)
    loss = DiffusionLoss(tsdiff_schedule(), "eps")
    net, history = _fit(_net(windows.shape[1], windows.shape[2], cfg), loss, (windows,), cfg, progress)
    return loss.denoiser(net), history


class MaskedConditionalLoss:
    """Per-example loss of the conditional model: cond = [y m, m], L = sum((1 - m)(eps_theta - eps)^2)/sum(1 - m)
    over the unobserved entries (Tashiro et al. 2021, CSDI, arXiv 2107.03502, eq. 6). Batch = (x0, mask)."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, net, batch, generator=None) -> torch.Tensor:
        x0, mask = batch
        t = torch.randint(0, self.schedule.num_train_timesteps, (x0.shape[0],), generator=generator)
        t = self.schedule.t_of_timestep(t).to(x0.dtype)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        x_t = self.schedule.add_noise(x0, t, eps)
        x_t = torch.where(mask > 0, x0, x_t)
        out = NetworkDenoiser(net, self.schedule).raw(x_t, t, cond=conditioning(x0, mask))
        free = 1.0 - mask
        return ((out - eps) ** 2 * free).flatten(1).sum(1) / free.flatten(1).sum(1).clamp_min(1.0)


def conditioning(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The conditional model's extra channels [y m, m], shape (B, 2D, L)."""
    return torch.cat([y * mask, mask], dim=1)


def train_conditional(windows: torch.Tensor, masks: torch.Tensor, cfg: TSDiffConfig | None = None, *,
                      progress: bool = False) -> tuple[NetworkDenoiser, dict]:
    """Train the conditional diffusion model on windows (N, D, L) with observation masks (N, D, L) (1 =
    observed), e.g. the forecasting mask (context observed) or a missing-value scenario's masks."""
    cfg = cfg or TSDiffConfig()
    windows = torch.as_tensor(windows, dtype=torch.float32)
    masks = torch.as_tensor(masks, dtype=torch.float32).expand_as(windows).contiguous()
    net = _net(windows.shape[1], windows.shape[2], cfg, cond_channels=2 * windows.shape[1])
    net, history = _fit(net, MaskedConditionalLoss(tsdiff_schedule()), (windows, masks), cfg, progress)
    return NetworkDenoiser(net, tsdiff_schedule()), history


@torch.no_grad()
def sample_conditional(denoiser: NetworkDenoiser, y: torch.Tensor, mask: torch.Tensor, num_samples: int, *,
                       generator: torch.Generator) -> torch.Tensor:
    """Ancestral DDPM sampling of the conditional model (Ho et al. 2020, Alg. 2) with cond = [y m, m] and the
    observed entries reset to y after each step. y, mask (B, D, L) -> samples (S, B, D, L); T NFE."""
    from .guidance import ddpm_step

    b = y.shape[0]
    y_rep = y.repeat(num_samples, 1, 1)
    m_rep = mask.expand_as(y).repeat(num_samples, 1, 1)
    cond = conditioning(y_rep, m_rep)
    x = torch.randn(y_rep.shape, generator=generator, dtype=y_rep.dtype)
    sched = denoiser.schedule
    for n in reversed(range(sched.num_train_timesteps)):
        t = sched.t_of_timestep(torch.full((x.shape[0],), n))
        eps = denoiser.raw(x, t.to(x.dtype), cond=cond)
        x = ddpm_step(sched, x, eps, n, generator)
        x = torch.where(m_rep > 0, y_rep, x)
    return x.reshape(num_samples, b, *y.shape[1:])


def forecast_mask(channels: int, context: int, horizon: int) -> torch.Tensor:
    """Observation mask (1, D, C + H) of forecasting: the context observed, the prediction window not."""
    mask = torch.zeros(1, channels, context + horizon)
    mask[..., :context] = 1.0
    return mask


def eps_mse(denoiser: NetworkDenoiser, windows: torch.Tensor, generator: torch.Generator) -> float:
    """Mean eps-MSE of the model on windows at uniform timesteps (held-out diagnostic)."""
    sched = denoiser.schedule
    with torch.no_grad():
        n = torch.randint(0, sched.num_train_timesteps, (windows.shape[0],), generator=generator)
        t = sched.t_of_timestep(n).to(windows.dtype)
        eps = torch.randn(windows.shape, generator=generator)
        out = denoiser.raw(sched.add_noise(windows, t, eps), t)
    return float(F.mse_loss(out, eps))
