"""StyleTTS-ZS (Li, Han, Jiang, Mesgarani 2024, arXiv 2409.10058) at our scale: a time-varying prosody style code
from a small VQ autoencoder on f0/energy contours, an EDM diffusion model that samples the code from text and a
speaker prompt with classifier-free guidance on the prompt, and its distillation to one network call.

There is no official code; the diffusion parts follow StyleTTS2's EDM-preconditioned sampler (yl4579/StyleTTS2,
``Modules/diffusion``), which StyleTTS-ZS builds on:

* **Code.** ``ProsodyVQ``: encoder (2 strided convs) maps a standardised contour (B, 2, 64) to z_e (B, D, 16), 16
  time-varying tokens; each token is replaced by its nearest codebook vector e_k (K = 64 entries) with the
  straight-through gradient z_q = z_e + sg(e_k - z_e); the decoder maps z_q back to (B, 2, 64). Loss (van den Oord
  et al. 2017, arXiv 1711.00937, eq. 3):

      L_vq = ||x - Dec(z_q)||^2 + ||sg(z_e) - e||^2 + beta ||z_e - sg(e)||^2,   beta = 0.25.

* **Diffusion over the code.** On the continuous pre-quantisation latent y = z_e / s (s scales it to std
  sigma_data = 0.5), the VE process y_sigma = y + sigma n with EDM preconditioning (Karras et al. 2022, arXiv
  2206.00364, Tab. 1): D(y; sigma) = c_skip y + c_out F(c_in y, c_noise) with

      c_skip = sd^2/(sigma^2 + sd^2), c_out = sigma sd/sqrt(sigma^2 + sd^2), c_in = 1/sqrt(sigma^2 + sd^2),
      c_noise = ln(sigma)/4,

  trained with ln sigma ~ N(-1.2, 1.2^2) and weight lambda(sigma) = (sigma^2 + sd^2)/(sigma sd)^2 on ||D - y||^2
  (``core`` supplies this: ``VESchedule`` + prediction ``"edm"`` + ``NetworkDenoiser(scale_input=True)``, whose
  network time is 1000 c_noise). The network sees the text aligned to the code's 16 positions and the speaker
  prompt; the prompt is replaced by a learned null embedding with probability 0.1 during training, so that

      D_cfg = D(y; sigma, text, null) + w (D(y; sigma, text, prompt) - D(y; sigma, text, null))

  (Ho & Salimans 2022, arXiv 2207.12598) pushes samples towards the prompt speaker (``methods.guidance``).
  Sampled latents are quantised to the codebook and decoded.

* **One-step distillation.** StyleTTS-ZS distills the sampler with a perceptual loss on 10k teacher samples. Our
  student S has the teacher's architecture and initial weights and maps the noise n at sigma_max in ONE call,
  y_s = D_S(sigma_max n; sigma_max, text, prompt); it is trained on a fixed set of teacher samples
  (n_i, text_i, prompt_i) -> y_i (guided, multi-step Heun) with a perceptual loss through the frozen decoder:

      L = sum_l mean (phi_l(y_s) - phi_l(y_i))^2 + mean (Dec(y_s) - Dec(y_i))^2,

  phi_l the decoder's hidden activations (on continuous latents: no quantisation inside the loss).

Training loops, sampling, baselines and metrics live in ``styletts_zs_train``; data in ``styletts_zs_data``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core import VESchedule
from ..core.denoiser import NetworkDenoiser
from ..methods.guidance import GuidedDenoiser
from ..nets.embedding import timestep_embedding

__all__ = ["ProsodyVQ", "StyleDenoiserNet", "style_schedule", "style_denoiser", "prompt_guided", "SIGMA_DATA",
           "SIGMA_MIN", "SIGMA_MAX"]

SIGMA_DATA, SIGMA_MIN, SIGMA_MAX = 0.5, 0.002, 10.0


class ProsodyVQ(nn.Module):
    """VQ prosody autoencoder: contour (B, 2, 64) -> z_e (B, D, 16) -> nearest of K codes -> contour (B, 2, 64).

    ``encode`` gives z_e; ``quantize(z_e)`` gives (z_q straight-through, code indices (B, 16), codebook loss,
    commitment loss); ``decode(z, features=True)`` also returns the decoder's hidden activations (the perceptual
    features of the distillation loss). ``forward`` returns (reconstruction, indices, L_codebook, L_commit)."""

    def __init__(self, latent_dim: int = 8, codebook_size: int = 64, channels: int = 64, in_channels: int = 2):
        super().__init__()
        self.config = {"latent_dim": latent_dim, "codebook_size": codebook_size, "channels": channels,
                       "in_channels": in_channels}
        c = channels
        self.encoder = nn.Sequential(
            nn.Conv1d(in_channels, c, 5, padding=2), nn.GELU(),
            nn.Conv1d(c, c, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(c, c, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(c, c, 3, padding=1), nn.GELU(),
            nn.Conv1d(c, latent_dim, 1))
        self.decoder = nn.ModuleList([
            nn.Conv1d(latent_dim, c, 3, padding=1),
            nn.ConvTranspose1d(c, c, 4, stride=2, padding=1),
            nn.ConvTranspose1d(c, c, 4, stride=2, padding=1),
            nn.Conv1d(c, c, 5, padding=2)])
        self.out = nn.Conv1d(c, in_channels, 5, padding=2)
        self.codebook = nn.Parameter(torch.randn(codebook_size, latent_dim))

    def encode(self, contour: torch.Tensor) -> torch.Tensor:
        """z_e: (B, 2, 64) -> (B, D, 16)."""
        return self.encoder(contour)

    def code_indices(self, z_e: torch.Tensor) -> torch.Tensor:
        """argmin_k ||z_e[:, :, j] - e_k||: (B, D, T) -> (B, T) long."""
        flat = z_e.transpose(1, 2).reshape(-1, z_e.shape[1])  # (B T, D)
        d = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.T + self.codebook.pow(2).sum(1)[None])
        return d.argmin(1).view(z_e.shape[0], z_e.shape[2])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of (B, T) indices: (B, D, T)."""
        return self.codebook[indices].transpose(1, 2)

    def quantize(self, z_e: torch.Tensor):
        """(z_q = z_e + sg(e - z_e), indices, ||sg(z_e) - e||^2, ||z_e - sg(e)||^2), the losses per example (B,)."""
        indices = self.code_indices(z_e)
        e = self.lookup(indices)
        codebook_loss = (z_e.detach() - e).pow(2).flatten(1).mean(1)
        commit_loss = (z_e - e.detach()).pow(2).flatten(1).mean(1)
        return z_e + (e - z_e).detach(), indices, codebook_loss, commit_loss

    def decode(self, z: torch.Tensor, features: bool = False):
        """(B, D, 16) -> contour (B, 2, 64); with ``features`` also the list of hidden activations."""
        feats, h = [], z
        for layer in self.decoder:
            h = F.gelu(layer(h))
            feats.append(h)
        out = self.out(h)
        return (out, feats) if features else out

    def forward(self, contour: torch.Tensor):
        z_q, indices, codebook_loss, commit_loss = self.quantize(self.encode(contour))
        return self.decode(z_q), indices, codebook_loss, commit_loss


class _FiLMBlock(nn.Module):
    """Residual dilated conv block with FiLM from the (noise level + prompt) embedding."""

    def __init__(self, channels: int, emb_dim: int, dilation: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.film = nn.Linear(emb_dim, 2 * channels)
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb)[:, :, None].chunk(2, dim=1)
        z = F.gelu(self.norm(h) * (1 + scale) + shift)
        return h + self.conv2(F.gelu(self.conv1(z)))


class StyleDenoiserNet(nn.Module):
    """F(c_in y, 1000 c_noise; text, prompt, keep) -> (B, D, T): the network inside the EDM-preconditioned
    denoiser of the style code.

    text (B, 64) long phoneme ids aligned to contour frames: embedded, one conv, average-pooled by 64/T to the code's
    T positions and concatenated with y. prompt (B, P) global style -> MLP embedding, replaced by the learned
    ``null_prompt`` where keep is False (classifier-free guidance on the prompt); added to the sinusoidal embedding
    of c_noise and fed to every block by FiLM.
    """

    def __init__(self, vocab_size: int, latent_dim: int = 8, prompt_dim: int = 4, channels: int = 64,
                 text_dim: int = 32, emb_dim: int = 64, dilations=(1, 2, 4, 1)):
        super().__init__()
        self.config = {"vocab_size": vocab_size, "latent_dim": latent_dim, "prompt_dim": prompt_dim,
                       "channels": channels, "text_dim": text_dim, "emb_dim": emb_dim, "dilations": list(dilations)}
        self.text_embed = nn.Embedding(vocab_size, text_dim)
        self.text_conv = nn.Conv1d(text_dim, text_dim, 5, padding=2)
        self.prompt_mlp = nn.Sequential(nn.Linear(prompt_dim, emb_dim), nn.GELU(), nn.Linear(emb_dim, emb_dim))
        self.null_prompt = nn.Parameter(torch.zeros(emb_dim))
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.GELU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Conv1d(latent_dim + text_dim, channels, 3, padding=1)
        self.blocks = nn.ModuleList([_FiLMBlock(channels, emb_dim, d) for d in dilations])
        self.out = nn.Conv1d(channels, latent_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, t_in: torch.Tensor, *, text: torch.Tensor, prompt: torch.Tensor,
                keep: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[-1]
        h_text = F.gelu(self.text_conv(self.text_embed(text).transpose(1, 2)))  # (B, text_dim, 64)
        h_text = F.adaptive_avg_pool1d(h_text, tokens)  # (B, text_dim, T)
        c_noise = t_in / 1000.0  # VESchedule's network time is 1000 * ln(sigma)/4
        emb = self.time_mlp(timestep_embedding(c_noise * 100.0, self.null_prompt.shape[0]))
        p = self.prompt_mlp(prompt)
        p = torch.where(keep.bool()[:, None], p, self.null_prompt[None].expand_as(p))
        emb = emb + p
        h = self.inp(torch.cat([x, h_text], dim=1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.gelu(h))


def style_schedule() -> VESchedule:
    """The VE (EDM) process of the style latent: sigma in [0.002, 10] (StyleTTS2 samples its style on a Karras
    schedule over [1e-4, 3] with rho = 9; our latent has std sigma_data = 0.5, so sigma_max = 20 sigma_data)."""
    return VESchedule(SIGMA_MIN, SIGMA_MAX)


def style_denoiser(net: StyleDenoiserNet) -> NetworkDenoiser:
    """EDM preconditioning around ``net`` (c_skip, c_out, c_in, c_noise of Karras et al. 2022 Tab. 1)."""
    return NetworkDenoiser(net, style_schedule(), "edm", scale_input=True, sigma_data=SIGMA_DATA)


def null_prompt_condition(cond: dict) -> dict:
    """The unconditional twin of a condition: the same text, the prompt dropped (keep = False)."""
    return {**cond, "keep": torch.zeros_like(cond["keep"])}


def prompt_guided(net: StyleDenoiserNet, scale: float) -> GuidedDenoiser:
    """Classifier-free guidance on the speaker prompt at scale w (w = 1: the conditional model, w = 0: no prompt);
    one batched network call of 2B per evaluation."""
    return GuidedDenoiser(style_denoiser(net), scale, null_condition=null_prompt_condition)
