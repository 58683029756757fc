"""Training the Consecutive Brownian Bridge (arXiv 2405.05953) and its conditional-DDPM baseline on frame triplets.

Data: triplets (previous, middle, next) = (frame i - g, frame i, frame i + g) of moving-digit clips
(``domains.video.moving_digits``), pixel space. Both models use the same small UNet (``nets.UNet``) with the
conditioning frames concatenated along channels:

* CBB: input cat[state, other bridge state, y, z] (4 C channels), output state - x (``ConsecutiveBrownianBridge.loss``);
* conditional DDPM (the baseline that starts from noise): input cat[x_t, y, z] (3 C channels), eps prediction on the
  linear VP schedule (T = 1000; Ho et al. 2020, arXiv 2006.11239), the concat-conditioned ``SRDenoiser`` and
  ``ddpm_sr_loss`` of ``methods.resshift`` with the two neighbours as its conditioning image; sampled by DDIM
  (Song et al. 2021, arXiv 2010.02502) on a uniform grid.
"""

from __future__ import annotations

import torch

from ...core import VPDiscrete, grid_uniform, prior_sample
from ...nets import UNet
from ...samplers import sample_ddim
from ...training import TrainConfig, Trainer
from ..resshift import SRDenoiser, ddpm_sr_loss
from .consecutive import ConsecutiveBrownianBridge

__all__ = ["frame_triplets", "moving_digit_triplets", "make_interpolation_net", "train_cbb",
           "train_conditional_ddpm", "sample_conditional_ddpm", "CBB_NET"]

CBB_NET = {"base_channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1}


def frame_triplets(videos: torch.Tensor, gaps=(1,)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prev, middle, next), each (M, C, H, W): frames (i - g, i, i + g) of videos (N, T, C, H, W) for every valid
    i and every gap g in ``gaps`` (ordered by gap, then frame, then clip)."""
    if videos.dim() != 5:
        raise ValueError(f"videos must be (N, T, C, H, W); got shape {tuple(videos.shape)}")
    n_frames = videos.shape[1]
    prev, mid, nxt = [], [], []
    for g in gaps:
        if not 1 <= g <= (n_frames - 1) // 2:
            raise ValueError(f"gap must be in [1, {(n_frames - 1) // 2}] for {n_frames}-frame clips; got {g}")
        for i in range(g, n_frames - g):
            prev.append(videos[:, i - g])
            mid.append(videos[:, i])
            nxt.append(videos[:, i + g])
    return torch.cat(prev), torch.cat(mid), torch.cat(nxt)


def moving_digit_triplets(num_clips: int, *, seed: int = 0, split: str = "train", gaps=(1,)):
    """Triplets of ``num_clips`` default moving-digit clips (8 frames, 24 x 24, one digit, 1-2 px / frame)."""
    from ...domains.video.moving_digits import moving_digits

    return frame_triplets(moving_digits(num_clips, seed=seed, split=split).videos, gaps)


def make_interpolation_net(conditioning_frames: int, *, channels: int = 1, image_size: int = 24,
                           base_channels: int = 16, channel_mult=(1, 2), num_res_blocks: int = 1) -> UNet:
    """The shared small UNet with ``conditioning_frames`` extra frames concatenated to its input (3 for the CBB:
    other state, y, z; 2 for the conditional DDPM: y, z)."""
    return UNet(in_channels=(1 + conditioning_frames) * channels, out_channels=channels, base_channels=base_channels,
                channel_mult=tuple(channel_mult), num_res_blocks=num_res_blocks, attention_resolutions=[],
                image_size=image_size)


def _fit(net, loss_fn, data, *, steps, seed, batch_size, lr, progress):
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, steps), ema_decay=None,
                      seed=seed, max_seconds=None, progress=progress, log_every=10 ** 9, grad_clip=1.0)
    hist = Trainer(net, loss_fn, data, cfg).fit()
    net.eval()
    return net, {"steps": int(hist.get("step", steps)), "seconds": float(hist.get("seconds", float("nan")))}


def train_cbb(cbb: ConsecutiveBrownianBridge, prev: torch.Tensor, mid: torch.Tensor, nxt: torch.Tensor, *,
              steps: int, seed: int = 0, batch_size: int = 64, lr: float = 2e-3, net_config: dict | None = None,
              progress: bool = False):
    """Train a fresh CBB net on triplets for ``steps`` AdamW steps; returns (net, {"steps", "seconds"})."""
    torch.manual_seed(seed)
    net = make_interpolation_net(3, channels=mid.shape[1], image_size=mid.shape[-1], **(net_config or CBB_NET))
    return _fit(net, cbb.loss, (prev, mid, nxt), steps=steps, seed=seed, batch_size=batch_size, lr=lr,
                progress=progress)


def train_conditional_ddpm(prev: torch.Tensor, mid: torch.Tensor, nxt: torch.Tensor, *, steps: int, seed: int = 0,
                           batch_size: int = 64, lr: float = 2e-3, net_config: dict | None = None,
                           progress: bool = False):
    """Train the baseline (eps prediction, linear VP, T = 1000) with the same net size and steps; returns
    (SRDenoiser, info); call it with ``lr=cat[y, z]``."""
    torch.manual_seed(seed)
    schedule = VPDiscrete.named("linear", 1000)
    net = make_interpolation_net(2, channels=mid.shape[1], image_size=mid.shape[-1], **(net_config or CBB_NET))
    net, info = _fit(net, ddpm_sr_loss(schedule), (mid, torch.cat([prev, nxt], dim=1)), steps=steps, seed=seed,
                     batch_size=batch_size, lr=lr, progress=progress)
    return SRDenoiser(net, schedule), info


@torch.no_grad()
def sample_conditional_ddpm(den: SRDenoiser, y: torch.Tensor, z: torch.Tensor, num_steps: int, *,
                            eta: float = 0.0, generator=None) -> torch.Tensor:
    """The middle frame from N(0, I) given both neighbours: DDIM(eta) on ``num_steps`` uniform steps to t = 0
    (NFE = num_steps), clamped to [-1, 1]."""
    ts = grid_uniform(den.schedule, num_steps, t_end=0.0)
    x = prior_sample(den.schedule, y.shape, generator)
    return sample_ddim(den, x, ts, eta=eta, cond={"lr": torch.cat([y, z], dim=1)}, generator=generator).clamp(-1, 1)
