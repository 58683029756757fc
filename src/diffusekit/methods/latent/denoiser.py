"""Diffusion in the latent space of a KL autoencoder (latent diffusion, Rombach et al. 2022, arXiv 2112.10752,
Sec. 3.2; and the latent baseline of "Enhancing Diffusion Models for High-Quality Image Generation", arXiv
2412.14422).

The dataset is encoded once, ``z0 = scale_factor * mu(x)``, and our UNet is trained on z0 with the ordinary
``training.DiffusionLoss`` (LDM eq. 2: E ||eps - eps_theta(z_t, t)||^2 with z_t = alpha_t z0 + sigma_t eps).
``LatentDenoiser`` is a ``NetworkDenoiser`` over latents, so every sampler, classifier-free guidance
(``class_labels``), guidance wrapper and inverse method runs unchanged on z; ``decode(z) = D(z / scale_factor)``
turns the sampled latents into images and ``encode(x)`` maps images into the latent space.
"""

from __future__ import annotations

import os

import torch

from ...core import NetworkDenoiser, Schedule, VPDiscrete
from ...nets import UNet
from ...training import DiffusionLoss, TrainConfig, Trainer
from .autoencoder import KLAutoencoder, load_autoencoder

__all__ = ["LatentDenoiser", "encode_dataset", "latent_unet", "train_latent_diffusion"]


def _autoencoder(autoencoder: KLAutoencoder | str | os.PathLike) -> KLAutoencoder:
    return autoencoder if isinstance(autoencoder, KLAutoencoder) else load_autoencoder(autoencoder)


@torch.no_grad()
def encode_dataset(autoencoder: KLAutoencoder | str | os.PathLike, x: torch.Tensor, *,
                   batch_size: int = 1024) -> torch.Tensor:
    """Latents ``scale_factor * mu(x)`` of images ``x`` (N, C, H, W) -> (N, *latent_shape), float32 on CPU.

    ``autoencoder`` is a :class:`KLAutoencoder` or a folder written by ``save_autoencoder``. The posterior mean
    (not a sample) is used, so the encoding is deterministic; with the small KL weight of latent diffusion the
    posterior standard deviation is small next to the spread of the means."""
    ae = _autoencoder(autoencoder).eval()
    dtype = next(ae.parameters()).dtype
    return torch.cat([ae.encode_latent(x[i:i + batch_size].to(dtype)).float().cpu()
                      for i in range(0, len(x), batch_size)])


class LatentDenoiser(NetworkDenoiser):
    """A ``NetworkDenoiser`` whose state space is the autoencoder's scaled latent space (LDM, arXiv 2112.10752).

    ``denoise(z, t, **cond)`` is the network's x0-estimate of the latent z0 (samplers see nothing else);
    ``decode(z) = D(z / scale_factor)`` gives images (B, C, H, W) and ``encode(x) = scale_factor * mu(x)`` latents
    (B, *latent_shape). Both run in the autoencoder's dtype and return the input's dtype.
    """

    def __init__(self, net: torch.nn.Module, schedule: Schedule, autoencoder: KLAutoencoder | str | os.PathLike,
                 prediction: str = "eps", *, scale_input: bool | None = None, sigma_data: float = 0.5):
        super().__init__(net, schedule, prediction, scale_input=scale_input, sigma_data=sigma_data)
        self.autoencoder = _autoencoder(autoencoder).eval()

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one latent (what samplers draw x_T in)."""
        return tuple(self.autoencoder.latent_shape)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one decoded image."""
        return tuple(self.autoencoder.image_shape)

    def _ae_dtype(self) -> torch.dtype:
        return next(self.autoencoder.parameters()).dtype

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images D(z / scale_factor): (B, *latent_shape) -> (B, *image_shape)."""
        return self.autoencoder.decode_latent(z.to(self._ae_dtype())).to(z.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents scale_factor * mu(x): (B, *image_shape) -> (B, *latent_shape)."""
        return self.autoencoder.encode_latent(x.to(self._ae_dtype())).to(x.dtype)


def latent_unet(latent_shape: tuple[int, ...], *, num_classes: int | None = None, base_channels: int = 32,
                channel_mult=(1, 2), attention: bool = True) -> UNet:
    """Our UNet sized for a (c, h, w) latent: attention at the lowest level (when ``attention``)."""
    c, h, _ = latent_shape
    low = h // 2 ** (len(channel_mult) - 1)
    return UNet(in_channels=c, base_channels=base_channels, channel_mult=tuple(channel_mult),
                attention_resolutions=(low,) if attention else (), num_classes=num_classes, image_size=h)


def train_latent_diffusion(autoencoder: KLAutoencoder | str | os.PathLike, x: torch.Tensor,
                           labels: torch.Tensor | None = None, *, net: torch.nn.Module | None = None,
                           schedule: Schedule | None = None, prediction: str = "eps", label_dropout: float = 0.1,
                           config: TrainConfig | None = None, out_dir=None) -> tuple[LatentDenoiser, dict]:
    """Encode ``x`` once and train ``net`` (default :func:`latent_unet`) on the latents with ``DiffusionLoss``.

    ``labels`` (N,) makes the model class-conditional with CFG label dropout ``label_dropout``; ``schedule``
    defaults to the linear discrete VP schedule of 1000 steps (LDM's); ``config`` to 1500 steps, batch 64,
    lr 2e-3, EMA 0.995. With ``out_dir`` (``autoencoder`` must then be a folder) the trainer writes there a checkpoint
    that ``checkpoint.load_latent_denoiser`` (and ``diffusekit sample --model``) reads. Returns (LatentDenoiser on the
    EMA weights when EMA is on, the trainer's history)."""
    ae_dir = None if isinstance(autoencoder, KLAutoencoder) else autoencoder
    if out_dir is not None and ae_dir is None:
        raise ValueError("out_dir needs the autoencoder as a folder (the checkpoint records where it lives)")
    ae = _autoencoder(autoencoder)
    z0 = encode_dataset(ae, x)
    schedule = schedule if schedule is not None else VPDiscrete.named("linear", 1000)
    num_classes = int(labels.max()) + 1 if labels is not None else None
    if net is None:
        net = latent_unet(ae.latent_shape, num_classes=num_classes)
    config = config or TrainConfig(steps=1500, batch_size=64, lr=2e-3, warmup_steps=50, ema_decay=0.995,
                                   progress=False, log_every=10**9)
    loss = DiffusionLoss(schedule, prediction, label_dropout=label_dropout if labels is not None else 0.0)
    data = (z0, labels) if labels is not None else (z0,)
    extra = None
    if out_dir is not None:
        from .checkpoint import latent_extra_config

        extra = latent_extra_config(ae_dir, schedule, loss)
    trainer = Trainer(net, loss, data, config, out_dir=out_dir, extra_config=extra)
    history = trainer.fit()
    trained = trainer.ema_model if trainer.ema_model is not None else net
    trained.eval()
    return LatentDenoiser(trained, schedule, ae, prediction, scale_input=loss.scale_input,
                          sigma_data=loss.sigma_data), history
