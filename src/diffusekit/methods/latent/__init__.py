"""Latent diffusion (Rombach et al. 2022, arXiv 2112.10752) and DiffuseVAE (Pandey et al. 2022, arXiv 2201.00308).

* ``autoencoder``: a small KL-regularised autoencoder (the first stage), its trainer and its files.
* ``denoiser``: diffusion on the autoencoder's scaled latents; ``LatentDenoiser`` (a ``NetworkDenoiser`` over z
  with ``encode`` / ``decode``), ``encode_dataset``, ``train_latent_diffusion``.
* ``checkpoint``: latent training checkpoints (``kind: "latent"``) that ``diffusekit sample`` reads.
* ``diffusevae``: DiffuseVAE, a VAE whose reconstructions condition a DDPM refiner.
"""

from .autoencoder import AutoencoderLoss, KLAutoencoder, kl_divergence, load_autoencoder, save_autoencoder, \
    train_autoencoder
from .checkpoint import load_latent_checkpoint, load_latent_denoiser, save_latent_checkpoint
from .denoiser import LatentDenoiser, encode_dataset, latent_unet, train_latent_diffusion
from .diffusevae import DiffuseVAE, RefinerDenoiser, RefinerLoss, RefinerUNet, train_diffusevae

__all__ = ["AutoencoderLoss", "DiffuseVAE", "KLAutoencoder", "LatentDenoiser", "RefinerDenoiser", "RefinerLoss",
           "RefinerUNet", "train_diffusevae", "encode_dataset", "kl_divergence",
           "latent_unet", "load_autoencoder", "load_latent_checkpoint", "load_latent_denoiser", "save_autoencoder",
           "save_latent_checkpoint", "train_autoencoder", "train_latent_diffusion"]
