"""A small KL-regularised convolutional autoencoder: the first stage of latent diffusion (Rombach et al. 2022,
"High-Resolution Image Synthesis with Latent Diffusion Models", arXiv 2112.10752, Sec. 3.1 and App. G) and the
VAE of DiffuseVAE (Pandey et al. 2022, arXiv 2201.00308, Sec. 3).

Encoder E: x (B, C, H, W) -> (mu, log sigma^2), each (B, c, H / 2^k, W / 2^k) (spatial latent, k = ``downsample``)
or (B, d) (``latent_dim``: a vector latent, DiffuseVAE's setting); the latent is reparameterised,

    z = mu + sigma * eps,   eps ~ N(0, I),

and the decoder D maps z back to an image. The per-example training loss is

    L(x) = sum_pixels (D(z) - x)^2  +  beta * KL(N(mu, sigma^2) || N(0, I))
           [+ w_p * sum_features (phi(D(z)) - phi(x))^2]

with the closed-form KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2) (Kingma & Welling 2014, arXiv
1312.6114, App. B). The summed squared error is the negative log-likelihood of a Gaussian decoder of variance 1/2
up to a constant, so ``beta = 1`` is the plain VAE ELBO (DiffuseVAE's stage 1, alpha = 1); latent diffusion uses a
small beta (LDM: KL weight 1e-6 against a summed reconstruction loss) so that the latent stays close to the image
while its scale is kept in check. The optional perceptual term is a tiny stand-in for LPIPS: squared differences
of the penultimate features phi of the digits classifier (8 x 8 digits only).

Latent scale (LDM, App. G "scale_factor"): diffusion runs on ``scale_factor * mu`` with
``scale_factor = 1 / std(mu over the training set)``, so the latents have unit variance like the images the
diffusion schedules were designed for; the factor is a buffer of the model, saved with its weights.

Files: an autoencoder folder is a diffusekit checkpoint (``checkpoint.safetensors`` + ``checkpoint.json``, written
atomically by ``training.checkpoint.save_checkpoint``) whose ``extra_config`` has ``kind: "autoencoder"``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError
from ...nets.unet import Downsample, Upsample, group_count
from ...training import TrainConfig, Trainer
from ...training.checkpoint import (CheckpointError, load_checkpoint, load_state_strict, save_checkpoint)

__all__ = ["KLAutoencoder", "AutoencoderLoss", "kl_divergence", "train_autoencoder", "save_autoencoder",
           "load_autoencoder", "AUTOENCODER_KIND"]

AUTOENCODER_KIND = "autoencoder"


class _Block(nn.Module):
    """Residual block without conditioning: ``skip(x) + conv(SiLU(GN(conv(SiLU(GN(x))))))``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(group_count(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(group_count(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


class KLAutoencoder(nn.Module):
    """Convolutional KL autoencoder for (B, C, H, W) images in [-1, 1] (see the module docstring).

    Encoder: conv3x3(C -> w), then ``downsample`` times [block(w_i -> w_{i+1}), stride-2 conv], a block, GN,
    SiLU and conv3x3 to 2c channels (mu and log sigma^2 of a (c, H/2^k, W/2^k) latent); with ``latent_dim`` d
    the last feature map is flattened and a linear layer gives 2d numbers instead (a vector latent). The decoder
    mirrors it with nearest-neighbour upsampling; its output is not squashed (the loss keeps it in range).
    Widths: ``w_i = base_channels * 2^min(i, 1)``. ``scale_factor`` (a buffer, 1 until
    :meth:`fit_scale_factor`) maps mu to the diffusion latent ``z = scale_factor * mu``.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, latent_channels: int = 2, downsample: int = 1,
                 base_channels: int = 32, latent_dim: int | None = None):
        super().__init__()
        in_channels = _positive_int("in_channels", in_channels)
        image_size = _positive_int("image_size", image_size)
        latent_channels = _positive_int("latent_channels", latent_channels)
        downsample = _positive_int("downsample", downsample, 0)
        base_channels = _positive_int("base_channels", base_channels)
        if image_size % 2**downsample:
            raise ValueError(f"image_size {image_size} must be divisible by 2**downsample = {2**downsample}")
        if latent_dim is not None:
            latent_dim = _positive_int("latent_dim", latent_dim)
        self.config = {"name": "kl_autoencoder", "in_channels": in_channels, "image_size": image_size,
                       "latent_channels": latent_channels, "downsample": downsample,
                       "base_channels": base_channels, "latent_dim": latent_dim}
        widths = [base_channels * 2 ** min(i, 1) for i in range(downsample + 1)]
        side = image_size // 2**downsample
        self.image_shape = (in_channels, image_size, image_size)
        self.latent_shape = (latent_dim,) if latent_dim is not None else (latent_channels, side, side)
        self.register_buffer("scale_factor", torch.ones(()))

        enc = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for i in range(downsample):
            enc += [_Block(widths[i], widths[i + 1]), Downsample(2, widths[i + 1])]
        top = widths[-1]
        enc += [_Block(top, top), nn.GroupNorm(group_count(top), top), nn.SiLU()]
        self.encoder = nn.Sequential(*enc)
        self._feature_shape = (top, side, side)
        if latent_dim is None:
            self.to_moments = nn.Conv2d(top, 2 * latent_channels, 3, padding=1)
            self.from_latent = nn.Conv2d(latent_channels, top, 3, padding=1)
        else:
            self.to_moments = nn.Sequential(nn.Flatten(), nn.Linear(top * side * side, 2 * latent_dim))
            self.from_latent = nn.Sequential(nn.Linear(latent_dim, top * side * side),
                                             nn.Unflatten(1, self._feature_shape))
        dec = [_Block(top, top)]
        for i in reversed(range(downsample)):
            dec += [Upsample(2, widths[i + 1]), _Block(widths[i + 1], widths[i])]
        dec += [nn.GroupNorm(group_count(widths[0]), widths[0]), nn.SiLU(),
                nn.Conv2d(widths[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def _check_images(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x) or x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"the autoencoder takes images of shape (B, {', '.join(map(str, self.image_shape))});"
                             f" got {shape}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) of q(z | x), each (B, *latent_shape)."""
        self._check_images(x)
        moments = self.to_moments(self.encoder(x))
        return moments.chunk(2, dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """D(z): (B, *latent_shape) -> (B, C, H, W) (unscaled latent, i.e. on mu's scale)."""
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents must have shape (B, {', '.join(map(str, self.latent_shape))}); "
                             f"got {tuple(z.shape)}")
        return self.decoder(self.from_latent(z))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """(reconstruction D(mu + sigma eps), mu, logvar) with eps drawn from ``generator`` (CPU)."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
        return self.decode(mu + torch.exp(0.5 * logvar) * eps), mu, logvar

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """D(mu(x)): the deterministic reconstruction."""
        return self.decode(self.encode(x)[0])

    @torch.no_grad()
    def fit_scale_factor(self, x: torch.Tensor, batch_size: int = 1024) -> float:
        """Set ``scale_factor = 1 / std(mu(x))`` over all latent entries of ``x`` (LDM App. G); returns it."""
        mu = torch.cat([self.encode(x[i:i + batch_size])[0] for i in range(0, len(x), batch_size)])
        std = float(mu.float().std())
        if not std > 0:
            raise ValueError("the latents have zero spread; the autoencoder is degenerate")
        self.scale_factor.fill_(1.0 / std)
        return 1.0 / std

    def encode_latent(self, x: torch.Tensor, generator: torch.Generator | None = None, *,
                      sample: bool = False) -> torch.Tensor:
        """The diffusion latent ``scale_factor * mu(x)`` (or ``scale_factor * (mu + sigma eps)`` with ``sample``)."""
        mu, logvar = self.encode(x)
        if sample:
            mu = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator).to(mu)
        return mu * self.scale_factor

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode_latent`'s scaling, then D: ``D(z / scale_factor)``."""
        return self.decode(z / self.scale_factor)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag e^logvar) || N(0, I)) per example, closed form (Kingma & Welling 2014, arXiv 1312.6114,
    App. B): 1/2 sum_j (mu_j^2 + e^{logvar_j} - 1 - logvar_j). Shapes: (B, ...) -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class AutoencoderLoss:
    """Per-example autoencoder loss for ``Trainer``: ``loss(model, batch, generator) -> Tensor[B]`` with
    batch = (x,) or (x, labels) (labels unused):

        L = sum (D(z) - x)^2 + beta * KL(q(z|x) || N(0, I)) + perceptual_weight * sum (phi(D(z)) - phi(x))^2

    ``classifier`` (a ``DigitsClassifier``, frozen) gives phi; it is needed only when ``perceptual_weight > 0``.
    """

    def __init__(self, beta: float = 1e-3, *, perceptual_weight: float = 0.0, classifier: nn.Module | None = None):
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0; got {beta}")
        if not perceptual_weight >= 0:
            raise ValueError(f"perceptual_weight must be >= 0; got {perceptual_weight}")
        if perceptual_weight > 0 and classifier is None:
            raise ValueError("perceptual_weight > 0 needs the classifier whose features phi the term compares")
        self.beta = float(beta)
        self.perceptual_weight = float(perceptual_weight)
        self.classifier = classifier
        if classifier is not None:
            classifier.eval().requires_grad_(False)

    def terms(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """The loss's per-example terms: ``reconstruction``, ``kl`` and ``perceptual`` (each (B,))."""
        recon, mu, logvar = model(x, generator)
        out = {"reconstruction": (recon - x).pow(2).flatten(1).sum(1), "kl": kl_divergence(mu, logvar)}
        if self.perceptual_weight > 0:
            out["perceptual"] = (self.classifier.features(recon) - self.classifier.features(x)).pow(2).sum(1)
        else:
            out["perceptual"] = torch.zeros_like(out["kl"])
        return out

    def __call__(self, model: nn.Module, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        t = self.terms(model, batch[0], generator)
        return t["reconstruction"] + self.beta * t["kl"] + self.perceptual_weight * t["perceptual"]

    def config(self) -> dict:
        return {"beta": self.beta, "perceptual_weight": self.perceptual_weight}


def train_autoencoder(x: torch.Tensor, *, latent_channels: int = 2, downsample: int = 1, base_channels: int = 32,
                      latent_dim: int | None = None, beta: float = 1e-3, perceptual_weight: float = 0.0,
                      classifier: nn.Module | None = None, steps: int = 1500, batch_size: int = 64,
                      lr: float = 1e-3, seed: int = 0, progress: bool = False,
                      out_dir: str | os.PathLike | None = None) -> tuple[KLAutoencoder, dict]:
    """Train a :class:`KLAutoencoder` on images ``x`` (N, C, H, W) with :class:`AutoencoderLoss` and the generic
    ``Trainer`` (AdamW, ``steps`` updates, linear warm-up over 50 steps, grad clip 1, no EMA), fit its latent
    scale factor on ``x`` and, with ``out_dir``, save it there (:func:`save_autoencoder`).
    Returns (model in eval mode, info with the loss history and the final per-term means on ``x``)."""
    torch.manual_seed(seed)
    model = KLAutoencoder(x.shape[1], x.shape[-1], latent_channels, downsample, base_channels, latent_dim)
    loss = AutoencoderLoss(beta, perceptual_weight=perceptual_weight, classifier=classifier)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, steps), ema_decay=None,
                      seed=seed, progress=progress, log_every=10**9)
    history = Trainer(model, loss, (x,), cfg).fit()
    model.eval()
    scale = model.fit_scale_factor(x)
    with torch.no_grad():
        terms = loss.terms(model, x[:1024], torch.Generator().manual_seed(seed))
    info = {"steps": history["step"], "seconds": history["seconds"], "loss": history["loss"],
            "scale_factor": scale, "loss_config": loss.config(), "train_config": cfg.to_dict(),
            **{f"final_{k}": float(v.mean()) for k, v in terms.items()}}
    if out_dir is not None:
        save_autoencoder(out_dir, model, info={k: v for k, v in info.items() if k != "loss"})
    return model, info


def save_autoencoder(path_dir: str | os.PathLike, model: KLAutoencoder, *, info: dict | None = None) -> Path:
    """Write ``model`` (weights and scale factor) as a checkpoint folder with ``extra_config.kind ==
    "autoencoder"``; ``info`` (JSON) is recorded beside. Files are written atomically. Returns the folder."""
    extra = {"kind": AUTOENCODER_KIND, "scale_factor": float(model.scale_factor), **(info or {})}
    step = int((info or {}).get("steps", 0))
    return save_checkpoint(path_dir, model=model, ema_model=None, optimizer=None, step=step, extra_config=extra)


def load_autoencoder(path_dir: str | os.PathLike) -> KLAutoencoder:
    """The :class:`KLAutoencoder` saved in ``path_dir`` by :func:`save_autoencoder` or by ``diffusekit train
    --objective autoencoder`` (eval mode, CPU, float32). It takes the raw (``model.``) weights, the ones the scale
    factor was fitted on, even when the folder also holds an EMA copy.

    Raises UserError (CheckpointError) when the folder is missing, corrupt or not an autoencoder."""
    tensors, meta = load_checkpoint(path_dir)
    extra = meta.get("extra_config") or {}
    config = dict(meta.get("model_config") or {})
    if extra.get("kind") != AUTOENCODER_KIND or config.get("name") != "kl_autoencoder":
        raise CheckpointError(f"{path_dir}: not an autoencoder folder (kind {extra.get('kind')!r}); "
                              "give a folder written by train_autoencoder / save_autoencoder")
    config.pop("name")
    try:
        model = KLAutoencoder(**config)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path_dir}: autoencoder config cannot be built: {exc}") from None
    load_state_strict(model, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
                      str(path_dir))
    return model.eval()
