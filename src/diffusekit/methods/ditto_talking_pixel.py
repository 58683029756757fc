"""The pixel-space baseline of Ditto (Li et al. 2024, arXiv 2411.19509): diffusion on the rendered frames.

Ditto argues for diffusing in an explicit motion space instead of pixels (or a VAE latent) as earlier audio-driven
talking-head diffusion models do, frame by frame with the identity frame and an audio window as conditions
(DiffTalk, Shen et al. 2023, arXiv 2301.03786; Diffused Heads, Stypulkowski et al. 2023, arXiv 2301.03396).
Our baseline is that kind of model at the size of our faces: ``PixelFrameDenoiser``, a ``nets.UNet`` over one
32 x 32 frame with the reference frame concatenated as a second channel and cross-attention (``context_dim``) to
the audio tokens of frames i - 2 .. i + 2 (Linear + learned positions; a learned null context for CFG), trained with
the same ``ditto_talking.AudioX0Loss`` (x0-prediction, cosine schedule, audio dropout 0.1) and sampled with the same
guided DDIM. Frames are sampled independently (each with its own noise), so nothing ties consecutive frames.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core import NetworkDenoiser
from ..core.grids import grid_uniform
from ..core.noise import prior_sample
from ..domains.video.talking_faces import AUDIO_DIM, FACE_SIZE
from ..nets import UNet
from ..samplers import get_sampler
from .ditto_talking import AudioX0Loss, guided, motion_schedule, silence_features

__all__ = ["AUDIO_CONTEXT", "PixelFrameDenoiser", "PixelModel", "audio_context", "pixel_training_data",
           "train_pixel_diffusion", "sample_frames"]

AUDIO_CONTEXT = 2  # audio frames each side of the generated frame


class PixelFrameDenoiser(nn.Module):
    """``forward(x, t, audio, reference, audio_keep) -> x0_hat`` for frames x (B, 1, 32, 32): ``nets.UNet`` on
    [x, reference frame] (B, 2, 32, 32) with cross-attention to the context c_j = Linear(audio_j) + P_j,
    j = -2..2 (audio (B, 5, 16)), or the learned null context where ``audio_keep`` is 0."""

    def __init__(self, base_channels: int = 16, channel_mult=(1, 2), context_width: int = 32):
        super().__init__()
        tokens = 2 * AUDIO_CONTEXT + 1
        self.config = {"name": "pixel_frame_denoiser", "base_channels": base_channels,
                       "channel_mult": list(channel_mult), "context_width": context_width}
        self.unet = UNet(in_channels=2, out_channels=1, base_channels=base_channels, channel_mult=tuple(channel_mult),
                         num_res_blocks=1, attention_resolutions=(), num_heads=4, image_size=FACE_SIZE,
                         context_dim=context_width)
        self.audio = nn.Linear(AUDIO_DIM, context_width)
        self.audio_positions = nn.Parameter(torch.randn(tokens, context_width) * 0.02)
        self.null_audio = nn.Parameter(torch.randn(tokens, context_width) * 0.02)

    def forward(self, x, t, audio, reference, audio_keep) -> torch.Tensor:
        keep = audio_keep.to(x.dtype)[:, None, None]
        context = keep * (self.audio(audio) + self.audio_positions) + (1 - keep) * self.null_audio
        return self.unet(torch.cat([x, reference], dim=1), t, context=context)


class PixelModel:
    """A trained ``PixelFrameDenoiser`` with its schedule (frames in [-1, 1])."""

    def __init__(self, net: PixelFrameDenoiser, schedule=None):
        self.net = net.eval()
        self.schedule = schedule or motion_schedule()
        self.denoiser = NetworkDenoiser(self.net, self.schedule, "x0")


def audio_context(audio: np.ndarray) -> torch.Tensor:
    """(T, 16) audio features -> (T, 5, 16) per-frame windows i - 2 .. i + 2 (silence beyond the ends)."""
    a = torch.as_tensor(np.asarray(audio), dtype=torch.float32)
    pad = silence_features().expand(AUDIO_CONTEXT, -1)
    a = torch.cat([pad, a, pad])
    return a.unfold(0, 2 * AUDIO_CONTEXT + 1, 1).transpose(1, 2).contiguous()


def pixel_training_data(data, *, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(frames (M, 1, 32, 32), audio windows (M, 5, 16), reference frames (M, 1, 32, 32)) from ``TalkingFaces``
    talks: every ``stride``-th frame, its talk's first frame as the reference (as the motion model's windows)."""
    frames, audio, refs = [], [], []
    for i in range(len(data)):
        f = data.frames(i)
        frames.append(f[::stride])
        audio.append(audio_context(data.audio[i])[::stride])
        refs.append(f[:1].expand(f[::stride].shape[0], -1, -1, -1))
    return torch.cat(frames), torch.cat(audio), torch.cat(refs)


def train_pixel_diffusion(data, *, steps: int, batch_size: int = 32, lr: float = 2e-3, seed: int = 0,
                          base_channels: int = 16, audio_dropout: float = 0.1,
                          progress: bool = False) -> tuple[PixelModel, dict]:
    """Train a fresh ``PixelFrameDenoiser`` with ``AudioX0Loss`` on the frames of ``data`` (``TalkingFaces``);
    returns the ``PixelModel`` and {"steps", "seconds", "frames", "params"}."""
    from ..domains.audio.text2audio import train_net

    tensors = pixel_training_data(data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = PixelFrameDenoiser(base_channels)
    loss = AudioX0Loss(motion_schedule(), audio_dropout)
    info = train_net(net, loss, tensors, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    info.update(frames=int(tensors[0].shape[0]), params=sum(p.numel() for p in net.parameters()))
    return PixelModel(net, loss.schedule), info


@torch.no_grad()
def sample_frames(model: PixelModel, audio_windows: torch.Tensor, reference_frames: torch.Tensor, *,
                  steps: int = 10, guidance: float = 2.0, generator: torch.Generator | None = None,
                  eta: float = 0.0) -> torch.Tensor:
    """Frames (B, 1, 32, 32) for audio windows (B, 5, 16) and reference frames (B, 1, 32, 32): guided DDIM(eta),
    ``steps`` uniform steps from t = 1 to t = 0 (``steps`` NFE of 2B frames with guidance), clipped to [-1, 1]."""
    b = audio_windows.shape[0]
    x = prior_sample(model.schedule, (b, 1, FACE_SIZE, FACE_SIZE), generator)
    cond = {"audio": audio_windows, "reference": reference_frames, "audio_keep": torch.ones(b)}
    ts = grid_uniform(model.schedule, steps, t_end=0.0)
    return get_sampler("ddim").fn(guided(model.denoiser, guidance), x, ts, eta=eta, cond=cond,
                                  generator=generator).clamp(-1, 1)
