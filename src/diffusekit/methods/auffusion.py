"""Auffusion (Xue et al. 2024, "Auffusion: Leveraging the Power of Diffusion and Large Language Models for
Text-to-Audio Generation", arXiv 2401.01044): text-to-audio as text-to-image diffusion on mel spectrogram images.

The paper takes a text-to-image latent diffusion model (SD-1.5's UNet with cross-attention to a frozen text
encoder), feeds it mel spectrograms normalised to an image range, trains with caption dropout, samples with
classifier-free guidance (CFG 7.5, 100 steps) and vocodes the generated mel with HiFi-GAN. Our CPU version:

* the image is the compact (64 mels, 32 frames of 60 ms) log-mel of a 2-s clip in [-1, 1]
  (``domains.audio.text2audio.compact_mel_image``); no VAE (the image is already small);
* the network is ``nets.UNet`` (2-D convs over frequency x time, as for images) with cross-attention to a frozen
  text encoder's hidden states (``context_dim``), trained with ``methods.text_conditioning.TextDiffusionLoss``
  (eps prediction, linear VP schedule with 1000 steps, caption dropout 0.1, Ho & Salimans 2022 arXiv 2207.12598
  Algorithm 1);
* sampling: DDIM (Song et al. 2021, arXiv 2010.02502) on ``eps = eps(x, c_null) + w (eps(x, c) - eps(x, c_null))``
  (``text_guided``), x0_hat clipped to [-1, 1]; vocoding by Griffin-Lim (no pretrained vocoder).

Measured (``bench auffusion``): the f0 of generated tones against the pitch in the caption (pYIN, cents), the sweep
direction of generated chirps, and the event kind predicted by a mel classifier trained on real clips.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core import VPDiscrete
from ..core.grids import grid_uniform
from ..core.noise import prior_sample
from ..domains.audio.features import f0_contour
from ..domains.audio.text2audio import FRAMES, audio_tokenizer, frozen_text_encoder, image_to_wave, train_net
from ..nets import UNet
from ..samplers import get_sampler
from .text_conditioning import TextConditionedDenoiser, TextDiffusionLoss, text_guided
from .thresholding import StaticThresholdDenoiser

__all__ = ["MelUNet", "auffusion_unet", "train_auffusion", "sample_mel_images", "generate_audio", "f0_summary",
           "cents_error", "MelKindClassifier"]

N_MELS = 64


class MelUNet(nn.Module):
    """The text-conditioned 2-D UNet over (B, 1, 64, F) mel images, ``forward(x, t, context, context_mask)``:
    ``nets.UNet`` (ResBlocks with scale-shift time embedding, cross-attention to the caption's hidden states in the
    middle block at 1/4 resolution) on the input concatenated with a fixed mel-frequency coordinate channel
    (row index scaled to [-1, 1]; CoordConv, Liu et al. 2018, arXiv 1807.03247).

    Why the extra channel: a mel image, unlike a photo, is not translation-invariant in frequency (the caption's
    "300 hz" is one row), and a small CNN sees where it is only through zero padding at the borders. Auffusion's
    SD UNet (256 mels, 4 levels) has the depth to infer it; ours gets the row position for free."""

    def __init__(self, context_dim: int = 64, base_channels: int = 16, channel_mult=(1, 2, 2)):
        super().__init__()
        self.unet = UNet(in_channels=2, out_channels=1, base_channels=base_channels, channel_mult=channel_mult,
                         num_res_blocks=1, attention_resolutions=(), num_heads=4, image_size=FRAMES,
                         context_dim=context_dim)
        self.config = {**self.unet.config, "name": "mel_unet", "in_channels": 1, "coordinate_channel": True}
        self.register_buffer("rows", torch.linspace(-1.0, 1.0, N_MELS)[:, None], persistent=False)

    def forward(self, x: torch.Tensor, t, context=None, context_mask=None) -> torch.Tensor:
        rows = self.rows.to(x.dtype).expand(x.shape[0], 1, x.shape[2], x.shape[3])
        return self.unet(torch.cat([x, rows], dim=1), t, context=context, context_mask=context_mask)


def auffusion_unet(context_dim: int = 64, base_channels: int = 16, channel_mult=(1, 2, 2)) -> MelUNet:
    """``MelUNet(context_dim, base_channels, channel_mult)``: the Auffusion denoiser network of this module."""
    return MelUNet(context_dim, base_channels, channel_mult)


def train_auffusion(images: torch.Tensor, captions: list[str], *, steps: int, batch_size: int = 32,
                    lr: float = 2e-3, seed: int = 0, base_channels: int = 16, caption_dropout: float = 0.1,
                    prediction: str = "eps", progress: bool = False) -> tuple[TextConditionedDenoiser, dict]:
    """Train a fresh ``auffusion_unet`` on (images (N, 1, 64, F) in [-1, 1], captions) with ``TextDiffusionLoss``
    (Rombach et al. 2022 arXiv 2112.10752 eq. 2 with caption dropout): L = E ||eps - eps_theta(x_t, t, tau(y'))||^2.

    Returns the ``TextConditionedDenoiser`` (frozen ``frozen_text_encoder(seed)``, ``audio_tokenizer()``) and
    {"steps", "seconds"}. ``prediction``: the network's target, "eps" (the paper, SD-1.5) or "v" (Salimans & Ho 2022,
    arXiv 2202.00512; in x0 terms the eps loss weighs errors by alpha_t^2 / sigma_t^2 ~ 0 at the high noise levels
    where the caption decides the layout, v by 1 / sigma_t^2 >= 1)."""
    if images.ndim != 4 or images.shape[1:3] != (1, N_MELS) or len(captions) != images.shape[0]:
        raise ValueError(f"images must be (N, 1, {N_MELS}, F) with one caption each; got {tuple(images.shape)} "
                         f"and {len(captions)} captions")
    tokenizer = audio_tokenizer()
    encoder = frozen_text_encoder(tokenizer, seed=seed)
    tokens, mask = tokenizer.encode(captions, max_len=encoder.max_len)
    schedule = VPDiscrete.named("linear", 1000)
    loss = TextDiffusionLoss(schedule, encoder, tokenizer, prediction, caption_dropout=caption_dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = auffusion_unet(encoder.width, base_channels)
    info = train_net(net, loss, (images.float(), tokens, mask), steps=steps, batch_size=batch_size, lr=lr,
                     seed=seed, progress=progress)
    return loss.text_denoiser(net), info


@torch.no_grad()
def sample_mel_images(denoiser: TextConditionedDenoiser, captions: list[str], *, guidance: float = 3.0,
                      steps: int = 25, seed: int = 0, frames: int = FRAMES) -> torch.Tensor:
    """(N, 1, 64, frames) mel images for ``captions``: deterministic DDIM (eta 0, ``steps`` uniform steps, 1 NFE
    each, 2 network passes per NFE when ``guidance != 1``) on the CFG denoiser
    ``eps = eps(x, c_null) + w (eps(x, c) - eps(x, c_null))`` (Ho & Salimans 2022, eq. 6; ``w = guidance``;
    ``w = 1`` is the conditional model without guidance), with x0_hat clipped to [-1, 1] (static thresholding).
    The prior noise is drawn from ``seed`` (one draw for the whole batch)."""
    if not captions:
        raise ValueError("captions must be a non-empty list of strings")
    cond = denoiser.condition(list(captions))
    schedule = denoiser.schedule
    x_T = prior_sample(schedule, (len(captions), 1, N_MELS, frames), torch.Generator().manual_seed(seed))
    guided = denoiser if guidance == 1.0 else text_guided(denoiser, guidance)
    x = get_sampler("ddim").fn(StaticThresholdDenoiser(guided), x_T, grid_uniform(schedule, steps), cond=cond)
    return x.clamp(-1, 1)


def generate_audio(denoiser: TextConditionedDenoiser, captions: list[str], *, guidance: float = 3.0,
                   steps: int = 25, seed: int = 0, n_iter: int = 32) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Text -> mel images (``sample_mel_images``) -> waves (Griffin-Lim, ``n_iter`` iterations, seed i for clip i)."""
    images = sample_mel_images(denoiser, captions, guidance=guidance, steps=steps, seed=seed)
    waves = [image_to_wave(img[0].numpy(), n_iter=n_iter, seed=i) for i, img in enumerate(images)]
    return images, waves


def f0_summary(wave, *, min_voiced: int = 10) -> dict:
    """pYIN f0 of a clip (``features.f0_contour``) summarised over its voiced frames: {"f0": median Hz, "slope":
    least-squares slope of log2 f0 against time in octaves/s (> 0 rising), "voiced": voiced frame count}; f0 and
    slope are NaN with fewer than ``min_voiced`` voiced frames."""
    f0, voiced, _ = f0_contour(wave)
    keep = voiced & np.isfinite(f0)
    n = int(keep.sum())
    if n < min_voiced:
        return {"f0": float("nan"), "slope": float("nan"), "voiced": n}
    times = np.flatnonzero(keep) * 0.01
    slope = np.polyfit(times, np.log2(f0[keep]), 1)[0]
    return {"f0": float(np.median(f0[keep])), "slope": float(slope), "voiced": n}


def cents_error(f0_hat: float, f0: float) -> float:
    """|1200 log2(f0_hat / f0)| in cents (100 cents = one semitone); NaN estimates count as 1200 (an octave)."""
    if not np.isfinite(f0_hat) or f0_hat <= 0:
        return 1200.0
    return float(abs(1200.0 * np.log2(f0_hat / f0)))


class MelKindClassifier:
    """Event-kind classifier on mel images (the "mel classifier" of the experiment): multinomial logistic
    regression (scikit-learn, L2, C = 1) on the image averaged to 32 mel bands x 8 time blocks (256 features),
    trained on real clips. ``fit(images (N, 1, 64, F), kinds) -> self``; ``predict(images) -> list[str]``."""

    def __init__(self):
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(C=1.0, max_iter=2000)

    @staticmethod
    def features(images: torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(images, dtype=torch.float32)
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, (32, 8))
        return pooled.flatten(1).numpy()

    def fit(self, images: torch.Tensor, kinds: list[str]) -> MelKindClassifier:
        self.model.fit(self.features(images), np.asarray(kinds))
        return self

    def predict(self, images: torch.Tensor) -> list[str]:
        return [str(k) for k in self.model.predict(self.features(images))]
