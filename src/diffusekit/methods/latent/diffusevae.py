"""DiffuseVAE (Pandey et al. 2022, "DiffuseVAE: Efficient, Controllable and High-Fidelity Generation from
Low-Dimensional Latents", arXiv 2201.00308): a VAE whose reconstruction conditions a DDPM refiner.

Stage 1 (Sec. 3.1): a VAE, ``L = sum (D(z) - x)^2 + alpha KL(q(z|x) || N(0, I))`` with alpha = 1
(``autoencoder.AutoencoderLoss`` with ``beta = 1``; here a vector latent), then frozen.

Stage 2 (Sec. 3.2, "Generator-A"): an eps-predicting UNet sees the noisy image and the VAE reconstruction
x_hat = D(mu(x)) concatenated along channels, ``eps_theta([x_t, x_hat], t)``, trained with the DDPM loss.

* Formulation 1 (eq. 5-7): the usual forward process x_t = alpha_t x0 + sigma_t eps; sampling starts from
  x_T ~ N(0, I) and the reconstruction enters only through the network's input.
* Formulation 2 (eq. 8-10): q(x_t | x0, x_hat) = N(alpha_t x0 + (1 - alpha_t) x_hat, sigma_t^2 I), i.e. the
  residual y = x - x_hat is diffused, y_t = alpha_t y0 + sigma_t eps, and sampling starts from x_T = x_hat + noise.
  ``RefinerDenoiser`` exposes y to the samplers (a Denoiser of y0 = x0 - x_hat) and adds x_hat back at the end.

Either way the refiner is a ``Denoiser`` with ``cond={"x_hat": x_hat}``, so every registered sampler applies and
the number of refiner steps trades speed for quality (Sec. 4.2: DDIM with few steps). Controllable generation
goes through the VAE latent (Sec. 5): interpolation z = (1 - l) z_a + l z_b, and attribute edits that move z along
the difference of two class means of the encoded training set; the refiner then adds detail at fixed noise.
"""

from __future__ import annotations

import torch

from ...core import NetworkDenoiser, Schedule, VPDiscrete, make_grid, prior_sample
from ...core.predictions import prediction_from_x0_eps
from ...nets import UNet
from ...samplers import get_sampler
from ...training import TrainConfig, Trainer
from ...training.losses import sample_times
from .autoencoder import KLAutoencoder, train_autoencoder

__all__ = ["RefinerUNet", "RefinerDenoiser", "RefinerLoss", "DiffuseVAE", "train_diffusevae", "FORMULATIONS"]

FORMULATIONS = (1, 2)


class RefinerUNet(UNet):
    """Our UNet taking the conditioning image as extra input channels: ``f([x, x_hat], t, c)``.

    ``channels`` image channels in and out; ``x_hat=None`` feeds zeros (the dropped condition of DiffuseVAE's
    classifier-free variant). Other keyword arguments are the UNet's. Shapes: x, x_hat (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int = 1, **unet_kwargs):
        super().__init__(in_channels=2 * channels, out_channels=channels, **unet_kwargs)
        self.config = {**self.config, "name": "diffusevae_refiner", "channels": channels}
        for key in ("in_channels", "out_channels"):
            self.config.pop(key)
        self.channels = channels

    def forward(self, x: torch.Tensor, t, class_labels=None, x_hat: torch.Tensor | None = None) -> torch.Tensor:
        x_hat = torch.zeros_like(x) if x_hat is None else x_hat.to(x.dtype)
        if x_hat.shape != x.shape:
            raise ValueError(f"x_hat must have the image's shape {tuple(x.shape)}; got {tuple(x_hat.shape)}")
        return super().forward(torch.cat([x, x_hat], dim=1), t, class_labels)


def _check_formulation(formulation: int) -> int:
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be 1 or 2 (DiffuseVAE eq. 5 / eq. 8); got {formulation!r}")
    return int(formulation)


class RefinerDenoiser(NetworkDenoiser):
    """The DiffuseVAE refiner as a Denoiser; call with ``x_hat=<VAE reconstruction>`` in ``cond``.

    Formulation 1: the state is the image x, ``raw(x, t) = eps_theta([x, x_hat], t)``.
    Formulation 2: the state is the residual y = x - x_hat; the network sees x = y + x_hat, as trained, and the
    Denoiser returns the estimate of y0 (add ``x_hat`` to the sampler's output: :meth:`DiffuseVAE.refine` does).
    """

    def __init__(self, net: RefinerUNet, schedule: Schedule, formulation: int = 1, prediction: str = "eps"):
        super().__init__(net, schedule, prediction, scale_input=False)
        self.formulation = _check_formulation(formulation)

    def raw(self, x: torch.Tensor, t: torch.Tensor, *, x_hat: torch.Tensor, **cond) -> torch.Tensor:
        x_net = x + x_hat.to(x.dtype) if self.formulation == 2 else x
        x_in, t_in = self.net_inputs(x_net, t)
        return self.net(x_in, t_in, x_hat=x_hat.to(x_in.dtype), **cond).to(x.dtype)


class RefinerLoss:
    """Per-example DDPM loss of the refiner for ``Trainer``; batch = (x0, x_hat) (DiffuseVAE eq. 7 / eq. 10):

        L = || eps - eps_theta([x_t, x_hat], t) ||^2,   x_t = alpha_t s0 + sigma_t eps (+ x_hat in form 2),

    with s0 = x0 (formulation 1) or s0 = x0 - x_hat (formulation 2), t uniform over the discrete steps.
    ``condition_dropout`` p replaces x_hat by zeros in the network input with probability p (form 1 only).
    """

    def __init__(self, schedule: Schedule, formulation: int = 1, *, condition_dropout: float = 0.0):
        if not 0 <= condition_dropout < 1:
            raise ValueError(f"condition_dropout must be in [0, 1); got {condition_dropout}")
        self.schedule = schedule
        self.formulation = _check_formulation(formulation)
        if condition_dropout > 0 and self.formulation == 2:
            raise ValueError("condition_dropout applies to formulation 1 only (form 2's forward process uses x_hat)")
        self.condition_dropout = float(condition_dropout)

    def __call__(self, net: torch.nn.Module, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x0, x_hat = batch[0], batch[1]
        b = x0.shape[0]
        s0 = x0 - x_hat if self.formulation == 2 else x0
        t = sample_times(self.schedule, b, generator).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        s_t = self.schedule.add_noise(s0, t, eps)
        cond_image = x_hat
        if self.condition_dropout > 0:
            keep = (torch.rand(b, generator=generator) >= self.condition_dropout).to(x0.device, x0.dtype)
            cond_image = x_hat * keep.reshape(-1, *([1] * (x0.dim() - 1)))
        x_net = s_t + x_hat if self.formulation == 2 else s_t
        den = RefinerDenoiser(net, self.schedule, 1)  # the input is built here already
        out = den.raw(x_net, t, x_hat=cond_image)
        target = prediction_from_x0_eps(s0, eps, t, self.schedule, "eps")
        return (out - target).pow(2).flatten(1).mean(1)


class DiffuseVAE:
    """A frozen VAE (:class:`KLAutoencoder`, ``beta = 1``) and a :class:`RefinerDenoiser` (arXiv 2201.00308).

    ``generate(z, steps)``: x_hat = D(z), then ``steps`` refiner steps (DDIM on diffusers' trailing grid by
    default, any registered sampler by name). ``steps = 0`` returns the VAE's own output x_hat.
    """

    def __init__(self, vae: KLAutoencoder, refiner: RefinerDenoiser):
        self.vae = vae.eval()
        self.refiner = refiner

    @property
    def formulation(self) -> int:
        return self.refiner.formulation

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The VAE's posterior mean mu(x): (B, C, H, W) -> (B, *latent_shape)."""
        return self.vae.encode(x)[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The VAE's output x_hat = D(z), clipped to [-1, 1]."""
        return self.vae.decode(z).clamp(-1, 1)

    def prior_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I) of shape (n, *latent_shape) (the VAE's prior)."""
        return torch.randn((n, *self.vae.latent_shape), generator=generator)

    @torch.no_grad()
    def refine(self, x_hat: torch.Tensor, steps: int, *, sampler: str = "ddim", generator=None,
               noise: torch.Tensor | None = None, **options) -> torch.Tensor:
        """Refine reconstructions ``x_hat`` (B, C, H, W) in ``steps`` sampler steps from ``noise`` (default drawn
        from ``generator``); formulation 2 adds x_hat to the sampled residual. Output clipped to [-1, 1]."""
        if steps == 0:
            return x_hat.clamp(-1, 1)
        schedule = self.refiner.schedule
        grid = "trailing" if isinstance(schedule, VPDiscrete) else "logsnr"
        ts = make_grid(grid, schedule, steps, **({} if grid == "trailing" else {"t_end": 0.0}))
        x_T = prior_sample(schedule, x_hat.shape, generator) if noise is None else noise
        info = get_sampler(sampler)
        if info.stochastic and "generator" not in options:
            options["generator"] = generator
        out = info.fn(self.refiner, x_T.to(x_hat.dtype), ts, cond={"x_hat": x_hat}, **options)
        if self.formulation == 2:
            out = out + x_hat
        return out.clamp(-1, 1)

    def generate(self, z: torch.Tensor, steps: int, **refine_options) -> torch.Tensor:
        """Images from VAE latents z: ``refine(D(z), steps, ...)``."""
        return self.refine(self.decode(z), steps, **refine_options)

    @staticmethod
    def interpolate(z_a: torch.Tensor, z_b: torch.Tensor, num: int) -> torch.Tensor:
        """Linear interpolation z_l = (1 - l) z_a + l z_b for l = 0, 1/(num-1), ..., 1 (DiffuseVAE Sec. 5.1).
        Shapes: z_a, z_b (*latent_shape) -> (num, *latent_shape); the ends are exactly z_a and z_b."""
        if num < 2:
            raise ValueError(f"num must be >= 2 (the two ends); got {num}")
        lam = torch.linspace(0, 1, num, dtype=z_a.dtype).reshape(-1, *([1] * z_a.dim()))
        return (1 - lam) * z_a + lam * z_b

    def class_direction(self, x: torch.Tensor, labels: torch.Tensor, source: int, target: int) -> torch.Tensor:
        """Attribute direction in VAE latent space: mean mu(x | target) - mean mu(x | source) (*latent_shape)."""
        z = self.encode(x)
        if not ((labels == source).any() and (labels == target).any()):
            raise ValueError(f"both classes {source} and {target} must occur in labels")
        return z[labels == target].mean(0) - z[labels == source].mean(0)

    @staticmethod
    def edit(z: torch.Tensor, direction: torch.Tensor, amount: float) -> torch.Tensor:
        """z + amount * direction (amount 1 moves a source-class mean onto the target-class mean)."""
        return z + amount * direction


def train_diffusevae(x: torch.Tensor, *, formulation: int = 1, latent_dim: int = 16, vae_steps: int = 2000,
                     refiner_steps: int = 1500, vae_base_channels: int = 32, refiner_base_channels: int = 32,
                     schedule: Schedule | None = None, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                     condition_dropout: float = 0.0, progress: bool = False) -> tuple[DiffuseVAE, dict]:
    """Both stages on images ``x`` (N, C, H, W) in [-1, 1]: the VAE (vector latent of ``latent_dim``, beta = 1,
    ``vae_steps`` updates), then the refiner (``RefinerUNet``, attention at the lowest level, EMA 0.995,
    ``refiner_steps`` updates) on pairs (x, D(mu(x))). ``schedule`` defaults to the linear discrete VP schedule
    of 1000 steps (DiffuseVAE's). Returns (DiffuseVAE, info with both stages' step counts and seconds)."""
    vae, vae_info = train_autoencoder(x, latent_dim=latent_dim, downsample=1, base_channels=vae_base_channels,
                                      beta=1.0, steps=vae_steps, batch_size=batch_size, lr=1e-3, seed=seed,
                                      progress=progress)
    with torch.no_grad():
        x_hat = torch.cat([vae.reconstruct(x[i:i + 1024]).clamp(-1, 1) for i in range(0, len(x), 1024)])
    schedule = schedule if schedule is not None else VPDiscrete.named("linear", 1000)
    torch.manual_seed(seed + 1)
    side = x.shape[-1]
    mult = (1, 2) if side <= 8 else (1, 2, 2)
    net = RefinerUNet(x.shape[1], base_channels=refiner_base_channels, channel_mult=mult,
                      attention_resolutions=(side // 2 ** (len(mult) - 1),), image_size=side)
    cfg = TrainConfig(steps=refiner_steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, refiner_steps),
                      ema_decay=0.995, seed=seed + 1, progress=progress, log_every=10**9)
    trainer = Trainer(net, RefinerLoss(schedule, formulation, condition_dropout=condition_dropout), (x, x_hat), cfg)
    history = trainer.fit()
    refiner_net = trainer.ema_model.eval()
    info = {"vae": {k: v for k, v in vae_info.items() if k != "loss"},
            "refiner": {"steps": history["step"], "seconds": history["seconds"], "formulation": formulation,
                        "final_loss": sum(history["loss"][-50:]) / max(1, len(history["loss"][-50:]))}}
    return DiffuseVAE(vae, RefinerDenoiser(refiner_net, schedule, formulation)), info
