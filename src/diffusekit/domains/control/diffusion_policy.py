"""Diffusion Policy: a conditional 1-D UNet that denoises action chunks (Chi et al., RSS 2023, arXiv 2303.04137).

The policy models p(A_t | O_t) of an action chunk A_t (horizon H, act_dim) given an observation window O_t
(n_obs steps) by a diffusion model over A_t whose network sees O_t as a global condition (Sec. 3.2, Fig. 2):

* ``ConditionalUnet1D``: a 1-D UNet over the horizon (channels = action dims) whose residual blocks are
  modulated by FiLM (Perez et al. 2018), h <- gamma(c) * h + beta(c), with c = [MLP(sinusoidal(t)), flatten(O_t)];
* training: DDPM's eps-prediction loss E ||eps - eps_theta(alpha_t A + sigma_t eps, t, O)||^2 on the
  squaredcos_cap_v2 schedule with 100 steps (``ObsConditionedDiffusionLoss``);
* inference: x0-clipped sampling (``clip_sample``) with any registered sampler from ``diffusekit.samplers``
  (the paper: DDPM 100 steps; its DDIM config: 8 steps), executed with a receding horizon (``rollout``).

``ChunkDiffusionPolicy`` is the trained policy object shared with the MoDE policy (``mode_policy``): it holds the
network, its schedule and the sampler settings, acts on batches, and saves / loads as safetensors + JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core import noise
from ...core.denoiser import NetworkDenoiser
from ...core.grids import make_grid
from ...core.predictions import prediction_from_x0_eps
from ...core.schedules import VPDiscrete, schedule_from_config
from ...methods.thresholding import StaticThresholdDenoiser
from ...nets.embedding import timestep_embedding
from ...samplers import sample as run_sampler
from ...training import TrainConfig, Trainer
from ...training.losses import DiffusionLoss, loss_weight, sample_times

__all__ = ["ConditionalUnet1D", "ObsConditionedDiffusionLoss", "ChunkDiffusionPolicy", "ChunkPolicyConfig",
           "DiffusionPolicyConfig", "SavedChunkPolicy",
           "train_diffusion_policy", "NET_BUILDERS", "save_policy_files", "read_policy_files"]

MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"


class FiLMResBlock1D(nn.Module):
    """Two Conv1d-GroupNorm-Mish blocks with FiLM between them and a residual connection:

        h = Block1(x);  (gamma, beta) = Linear(Mish(c));  h = Block2(gamma * h + beta);  out = h + Res(x)

    Shapes: x (B, cin, L), c (B, cond_dim) -> (B, cout, L). (Chi et al. 2023, Sec. 3.2 "FiLM conditioning".)
    """

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int = 5, groups: int = 8):
        super().__init__()

        def block(a, b):
            return nn.Sequential(nn.Conv1d(a, b, kernel, padding=kernel // 2), nn.GroupNorm(groups, b), nn.Mish())

        self.block1, self.block2 = block(cin, cout), block(cout, cout)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.residual = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(c)[:, :, None].chunk(2, dim=1)
        return self.block2(gamma * self.block1(x) + beta) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """FiLM-conditioned 1-D UNet eps_theta(A_t, t, O) over action chunks (Chi et al. 2023, Sec. 3.2).

    Level i has ``down_dims[i]`` channels: two FiLM residual blocks, then a stride-2 convolution (all levels but
    the last; so the horizon must be divisible by 2 ** (len(down_dims) - 1)); two middle blocks; the decoder
    mirrors the encoder with skip concatenation and transposed-convolution upsampling; a final 1x1 conv maps back
    to ``act_dim`` channels. The global condition is c = [MLP(sinusoidal(t)), flatten(O)].

    ``forward(x, t, obs)``: x (B, act_dim, H), t (B,) network time, obs (B, obs_cond_dim) or (B, n_obs, obs_dim).
    """

    def __init__(self, act_dim: int, obs_cond_dim: int, horizon: int = 16, down_dims: Sequence[int] = (64, 128, 256),
                 kernel: int = 5, time_dim: int = 64):
        super().__init__()
        down_dims = [int(d) for d in down_dims]
        if horizon % 2 ** (len(down_dims) - 1):
            raise ValueError(f"horizon {horizon} must be divisible by 2**(len(down_dims)-1) = "
                             f"{2 ** (len(down_dims) - 1)}")
        self.config = {"name": "cond_unet1d", "act_dim": act_dim, "obs_cond_dim": obs_cond_dim, "horizon": horizon,
                       "down_dims": down_dims, "kernel": kernel, "time_dim": time_dim}
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, 4 * time_dim), nn.Mish(), nn.Linear(4 * time_dim, time_dim))
        cond = time_dim + obs_cond_dim
        widths = [act_dim] + down_dims
        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(down_dims) - 1
            self.down.append(nn.ModuleList([FiLMResBlock1D(a, b, cond, kernel), FiLMResBlock1D(b, b, cond, kernel),
                                            nn.Identity() if last else nn.Conv1d(b, b, 3, stride=2, padding=1)]))
        mid = down_dims[-1]
        self.mid = nn.ModuleList([FiLMResBlock1D(mid, mid, cond, kernel), FiLMResBlock1D(mid, mid, cond, kernel)])
        self.up = nn.ModuleList()
        for a, b in reversed(list(zip(down_dims[:-1], down_dims[1:]))):
            self.up.append(nn.ModuleList([FiLMResBlock1D(2 * b, a, cond, kernel), FiLMResBlock1D(a, a, cond, kernel),
                                          nn.ConvTranspose1d(a, a, 4, stride=2, padding=1)]))
        self.final = nn.Sequential(nn.Conv1d(down_dims[0], down_dims[0], kernel, padding=kernel // 2),
                                   nn.GroupNorm(8, down_dims[0]), nn.Mish(), nn.Conv1d(down_dims[0], act_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        c = torch.cat([self.time_mlp(timestep_embedding(t, self.time_dim)), obs.reshape(x.shape[0], -1)], dim=1)
        skips = []
        h = x
        for res1, res2, down in self.down:
            h = res2(res1(h, c), c)
            skips.append(h)
            h = down(h)
        for res in self.mid:
            h = res(h, c)
        for res1, res2, up in self.up:
            h = up(res2(res1(torch.cat([h, skips.pop()], dim=1), c), c))
        return self.final(h)


NET_BUILDERS: dict[str, Callable[..., nn.Module]] = {"cond_unet1d": ConditionalUnet1D}


class ObsConditionedDiffusionLoss(DiffusionLoss):
    """``DiffusionLoss`` whose batch is (chunks (B, act_dim, H), windows (B, n_obs * obs_dim)): the network gets
    the observations as ``obs=`` (a continuous global condition) instead of class labels,

        L_i = w(t_i) mean_j (F(alpha_t A_i + sigma_t eps, t_i, O_i)_j - target_j)^2.
    """

    def __call__(self, net: nn.Module, batch, generator=None) -> torch.Tensor:
        x0, obs = batch[0], batch[1]
        t = sample_times(self.schedule, x0.shape[0], generator, method=self.time_sampling).to(x0.device)
        eps = noise.randn(x0.shape, generator, dtype=x0.dtype).to(x0.device)
        x_t = self.schedule.add_noise(x0, t, eps)
        out = self.denoiser(net).raw(x_t, t, obs=obs)
        target = prediction_from_x0_eps(x0, eps, t, self.schedule, self.prediction, sigma_data=self.sigma_data)
        weight = loss_weight(t, self.schedule, self.prediction, self.weighting, min_snr_gamma=self.min_snr_gamma,
                             sigma_data=self.sigma_data)
        return ((out - target) ** 2).flatten(1).mean(1) * weight.to(out.dtype)


@dataclass
class ChunkPolicyConfig:
    """What every action-chunk policy shares: the data layout (n_obs observation steps in, a chunk of ``horizon``
    actions out of which ``n_action`` are executed) and the optimiser (AdamW steps, batch, lr, EMA, seed)."""

    n_obs: int = 2
    horizon: int = 16
    n_action: int = 8
    train_steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    ema_decay: float = 0.995
    seed: int = 0


@dataclass
class DiffusionPolicyConfig(ChunkPolicyConfig):
    """Training and inference settings (paper values in brackets; ours are CPU-sized).

    n_obs 2, horizon 16, n_action 8 [same]; down_dims (32, 64) [256, 512, 1024]; 100 train steps of
    squaredcos_cap_v2 [same]; AdamW lr 1e-3, batch 128, EMA 0.995 [lr 1e-4, batch 256, EMA power 0.75]; inference
    sampler "ddpm" with 100 steps [same] or "ddim" / "dpm_solver_pp_2m" with 8.
    """

    down_dims: tuple = (32, 64)
    num_train_timesteps: int = 100
    sampler: str = "ddpm"
    sample_steps: int = 100
    clip_sample: bool = True


class SavedChunkPolicy:
    """The saving half of a chunk policy: ``net`` + ``config()`` written as safetensors + JSON (``save_policy_files``);
    subclasses define ``config()``, ``load(folder)`` and ``act(windows, generators) -> chunks``."""

    net: nn.Module

    def config(self) -> dict:
        raise NotImplementedError

    def save(self, folder) -> None:
        save_policy_files(folder, self.net.state_dict(), self.config())


class ChunkDiffusionPolicy(SavedChunkPolicy):
    """A trained diffusion policy over action chunks: ``act(windows, generators) -> chunks`` (see ``rollout``).

    ``sample_chunks`` draws A ~ N(0, prior) (B, act_dim, H) and integrates the reverse process on a ``grid``
    ("uniform" in t to t = 0 for VP; "logsnr" for VE/EDM) with ``sampler`` in ``steps`` steps, conditioned on the
    observation window; with ``clip_sample`` x0_hat is clipped to [-1, 1] (Diffusion Policy's clip_sample).
    """

    def __init__(self, net: nn.Module, schedule, *, prediction: str, n_obs: int, horizon: int, n_action: int,
                 act_dim: int, obs_dim: int, sampler: str, steps: int, grid: str = "uniform",
                 clip_sample: bool = True, method: str = "diffusion", env_id: str | None = None,
                 scale_input: bool | None = None):
        self.net, self.schedule, self.prediction = net.eval(), schedule, prediction
        self.n_obs, self.horizon, self.n_action = n_obs, horizon, n_action
        self.act_dim, self.obs_dim = act_dim, obs_dim
        self.sampler, self.steps, self.grid, self.clip_sample = sampler, int(steps), grid, bool(clip_sample)
        self.method, self.env_id, self.scale_input = method, env_id, scale_input
        self.nfe = 0

    def denoiser(self):
        den = NetworkDenoiser(self.net, self.schedule, self.prediction, scale_input=self.scale_input)
        return StaticThresholdDenoiser(den) if self.clip_sample else den

    def time_grid(self, steps: int | None = None) -> torch.Tensor:
        """The sampling grid: ``steps`` steps ending at t = 0 (clean actions)."""
        return make_grid(self.grid, self.schedule, int(steps or self.steps), t_end=0.0)

    @torch.no_grad()
    def sample_chunks(self, windows: torch.Tensor, generators, *, sampler: str | None = None,
                      steps: int | None = None) -> torch.Tensor:
        """Action chunks (B, H, act_dim) for observation windows (B, n_obs, obs_dim), one generator per row."""
        b = windows.shape[0]
        x = noise.prior_sample(self.schedule, (b, self.act_dim, self.horizon), list(generators))
        ts = self.time_grid(steps)
        self.nfe += ts.numel() - 1
        out = run_sampler(sampler or self.sampler, self.denoiser(), x, ts,
                          cond={"obs": windows.reshape(b, -1).float()}, generator=list(generators))
        return out.transpose(1, 2)

    def act(self, windows: np.ndarray, generators) -> np.ndarray:
        return self.sample_chunks(torch.as_tensor(windows), generators).numpy()

    def config(self) -> dict:
        return {"method": self.method, "env_id": self.env_id, "net": self.net.config,
                "schedule": self.schedule.config(), "prediction": self.prediction, "n_obs": self.n_obs,
                "horizon": self.horizon, "n_action": self.n_action, "act_dim": self.act_dim, "obs_dim": self.obs_dim,
                "sampler": self.sampler, "steps": self.steps, "grid": self.grid, "clip_sample": self.clip_sample,
                "scale_input": self.scale_input}

    # the constructor's keyword settings, all stored in config.json
    SETTINGS = ("prediction", "n_obs", "horizon", "n_action", "act_dim", "obs_dim", "sampler", "steps", "grid",
                "clip_sample", "method", "env_id", "scale_input")

    @classmethod
    def load(cls, folder, **extra) -> "ChunkDiffusionPolicy":
        """The policy saved in ``folder``; ``extra`` keyword arguments go to the constructor (subclasses' own)."""
        state, cfg = read_policy_files(folder)
        net_cfg = dict(cfg["net"])
        net = NET_BUILDERS[net_cfg.pop("name")](**net_cfg)
        net.load_state_dict(state)
        return cls(net, schedule_from_config(cfg["schedule"]), **{k: cfg[k] for k in cls.SETTINGS}, **extra)


def save_policy_files(folder, state: dict, config: dict) -> None:
    """Write ``folder/model.safetensors`` (tensors) and ``folder/config.json``, each atomically."""
    from safetensors.torch import save_file

    from ...io import atomic_write, atomic_write_json

    folder = Path(folder)
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    atomic_write(folder / MODEL_FILE, lambda tmp: save_file(state, str(tmp)))
    atomic_write_json(folder / CONFIG_FILE, config)


def read_policy_files(folder) -> tuple[dict, dict]:
    """(state dict, config) of a policy folder written by ``save_policy_files`` (safetensors, no pickle)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        raise ValueError(f"{folder} is not a policy checkpoint (needs {MODEL_FILE} and {CONFIG_FILE})")
    return load_file(str(folder / MODEL_FILE)), json.loads((folder / CONFIG_FILE).read_text())


def chunk_tensors(windows: np.ndarray, chunks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Training tensors: chunks as (N, act_dim, H) and windows flattened to (N, n_obs * obs_dim)."""
    return (torch.as_tensor(chunks).transpose(1, 2).contiguous(),
            torch.as_tensor(windows).reshape(len(windows), -1).contiguous())


def fit(net: nn.Module, loss_fn, data, cfg, progress: bool) -> nn.Module:
    """Train ``net`` with the shared ``Trainer`` (AdamW, warm-up, grad clip 1, EMA) and return the EMA copy."""
    tc = TrainConfig(steps=cfg.train_steps, batch_size=min(cfg.batch_size, len(data[0])), lr=cfg.lr,
                     warmup_steps=min(100, cfg.train_steps // 10), ema_decay=cfg.ema_decay, seed=cfg.seed,
                     progress=progress, log_every=max(1, cfg.train_steps))
    trainer = Trainer(net, loss_fn, data, tc)
    trainer.fit()
    return (trainer.ema_model or net).eval()


def train_diffusion_policy(windows: np.ndarray, chunks: np.ndarray, cfg: DiffusionPolicyConfig | None = None, *,
                           env_id: str | None = None, progress: bool = False) -> ChunkDiffusionPolicy:
    """Train Diffusion Policy (eps-prediction DDPM on squaredcos_cap_v2, FiLM UNet) on demonstration chunks
    (``demos.chunk_dataset``): windows (N, n_obs, obs_dim), chunks (N, H, act_dim) in [-1, 1]."""
    cfg = cfg or DiffusionPolicyConfig()
    torch.manual_seed(cfg.seed)  # parameter init only; training draws come from the trainer's generators
    n, n_obs, obs_dim = windows.shape
    act_dim = chunks.shape[2]
    net = ConditionalUnet1D(act_dim, n_obs * obs_dim, cfg.horizon, cfg.down_dims)
    schedule = VPDiscrete.named("squaredcos_cap_v2", cfg.num_train_timesteps)
    loss = ObsConditionedDiffusionLoss(schedule, "eps")
    ema = fit(net, loss, chunk_tensors(windows, chunks), cfg, progress)
    return ChunkDiffusionPolicy(ema, schedule, prediction="eps", n_obs=n_obs, horizon=cfg.horizon,
                                n_action=cfg.n_action, act_dim=act_dim, obs_dim=obs_dim, sampler=cfg.sampler,
                                steps=cfg.sample_steps, clip_sample=cfg.clip_sample, env_id=env_id)


def config_dict(cfg) -> dict:
    """A dataclass config as a JSON-ready dict."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
