"""The unCLIP-style decoder of λ-ECLIPSE: image diffusion conditioned on a CLIP image embedding.

λ-ECLIPSE (Patel et al. 2024, "λ-ECLIPSE: Multi-Concept Personalized Text-to-Image Diffusion Models by Leveraging
CLIP Latent Space", arXiv 2402.05195) and ECLIPSE (Patel et al. 2024, arXiv 2312.04655) train only a prior; the
decoder is a frozen diffusion model p(x | z) on CLIP image embeddings z (Kandinsky v2.2, an unCLIP decoder:
Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP Latents", arXiv 2204.06125, §2.1).
Ours is that decoder at the scale of the captioned digits:

* Network (``EmbeddingConditionedUNet``): as unCLIP "projects CLIP embeddings into four extra tokens of context",
  a linear map ``z (B, E) -> K tokens (B, K, D)`` feeds the cross-attention of a ``nets.UNet(context_dim=D)``.
* Training (``EmbeddingDiffusionLoss``): ``L_i = w(t) || F(x_t, t, z'_i) - target ||^2`` with ``z = f_img(x0)``
  the frozen CLIP image embedding of the training image and ``z' = 0`` with probability ``embedding_dropout``
  (unCLIP: "randomly setting the CLIP embeddings to zero 10% of the time"), so the net is p(x | z) and p(x).
* Sampling (``decode_embeddings``): classifier-free guidance on the null (zero) embedding (Ho & Salimans 2022,
  arXiv 2207.12598, eq. 6) ``eps = eps(x, 0) + w (eps(x, z) - eps(x, 0))`` through ``methods.guidance``.

The condition a denoiser of this net takes is ``{"image_embedding": (B, E)}``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import noise
from ..core._tensor import per_sample
from ..core.denoiser import NetworkDenoiser
from ..core.predictions import prediction_from_x0_eps
from ..training.losses import DiffusionLoss, _per_example, loss_weight, sample_times
from .guidance import GuidedDenoiser
from .thresholding import StaticThresholdDenoiser

__all__ = ["EmbeddingConditionedUNet", "EmbeddingDiffusionLoss", "null_embedding", "embedding_guided",
           "decode_embeddings"]


class EmbeddingConditionedUNet(nn.Module):
    """unCLIP's decoder network (Ramesh et al. 2022, arXiv 2204.06125, §2.1) at small scale.

    ``tokens = W z + b`` reshaped to (B, K, D) (``num_tokens`` = K context tokens of the UNet's ``context_dim`` D);
    ``forward(x (B, C, S, S), t (B,), image_embedding (B, E)) = unet(x, t, context=tokens)``. The null embedding
    is z = 0, whose tokens are the learned bias b. ``unet`` is a ``nets.build_net`` config with ``context_dim``.
    """

    def __init__(self, unet: dict, embed_dim: int, num_tokens: int = 4):
        from ..nets import build_net

        super().__init__()
        if "context_dim" not in unet:
            raise ValueError("the decoder's UNet config needs a context_dim (the width of the embedding tokens)")
        if num_tokens < 1 or embed_dim < 1:
            raise ValueError(f"num_tokens and embed_dim must be >= 1; got {num_tokens}, {embed_dim}")
        self.unet = build_net(dict(unet))
        self.embed_dim, self.num_tokens, self.context_dim = int(embed_dim), int(num_tokens), int(unet["context_dim"])
        self.to_tokens = nn.Linear(embed_dim, num_tokens * self.context_dim)
        self.config = {"name": "eclipse_decoder", "unet": dict(unet), "embed_dim": self.embed_dim,
                       "num_tokens": self.num_tokens, "in_channels": unet.get("in_channels", 3),
                       "image_size": unet.get("image_size", 24)}

    def forward(self, x: torch.Tensor, t: torch.Tensor, image_embedding: torch.Tensor | None = None) -> torch.Tensor:
        if image_embedding is None:
            image_embedding = null_embedding(x.shape[0], self.embed_dim, like=x)
        if image_embedding.shape != (x.shape[0], self.embed_dim):
            raise ValueError(f"image_embedding must be (B={x.shape[0]}, {self.embed_dim}); "
                             f"got {tuple(image_embedding.shape)}")
        tokens = self.to_tokens(image_embedding.to(x.dtype)).view(x.shape[0], self.num_tokens, self.context_dim)
        return self.unet(x, t, context=tokens)


def null_embedding(batch: int, embed_dim: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """The unconditional embedding z = 0 (B, E) of the decoder's classifier-free guidance (unCLIP §2.1)."""
    kwargs = {} if like is None else {"dtype": like.dtype, "device": like.device}
    return torch.zeros(batch, embed_dim, **kwargs)


def _null_condition(cond: dict) -> dict:
    if "image_embedding" not in cond:
        raise ValueError("the decoder's guidance needs image_embedding in the condition")
    return {"image_embedding": torch.zeros_like(cond["image_embedding"])}


class EmbeddingDiffusionLoss(DiffusionLoss):
    """Per-example decoder loss with embedding dropout (a ``Trainer`` loss function).

    Batch = ``(x0 (B, C, S, S), z (B, E))``, z the frozen CLIP image embedding of x0. With ``t ~ p(t)``,
    ``eps ~ N(0, I)``, ``x_t = alpha_t x0 + sigma_t eps`` and ``z' = 0`` with probability ``embedding_dropout``:
    ``L_i = w(t_i) mean_j (F(x_t, t_i, z'_i)_j - target_j)^2`` (unCLIP decoder, Ramesh et al. 2022,
    arXiv 2204.06125, §2.1; CFG training as Ho & Salimans 2022, arXiv 2207.12598, Algorithm 1). Random draws:
    t, eps, then the dropout coins.
    """

    def __init__(self, schedule, prediction: str = "eps", *, embedding_dropout: float = 0.1, **kwargs):
        if not 0 <= embedding_dropout < 1:
            raise ValueError(f"embedding_dropout must be in [0, 1); got {embedding_dropout}")
        super().__init__(schedule, prediction, **kwargs)
        self.embedding_dropout = float(embedding_dropout)

    def config(self) -> dict:
        return {**super().config(), "embedding_dropout": self.embedding_dropout}

    def __call__(self, net: torch.nn.Module, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        if len(batch) != 2:
            raise ValueError("a decoder batch is (images, image_embeddings)")
        x0, z = batch
        b = x0.shape[0]
        t = sample_times(self.schedule, b, generator, method=self.time_sampling).to(x0.device)
        eps = noise.randn(x0.shape, generator, dtype=x0.dtype).to(x0.device)
        x_t = self.schedule.add_noise(x0, t, eps)
        if self.embedding_dropout > 0:
            drop = _per_example(generator, b, lambda n, g: torch.rand(n, generator=g)) < self.embedding_dropout
            z = torch.where(drop.to(z.device)[:, None], torch.zeros_like(z), z)
        out = self.denoiser(net).raw(x_t, t, image_embedding=z)
        target = prediction_from_x0_eps(x0, eps, t, self.schedule, self.prediction, sigma_data=self.sigma_data)
        per_example = ((out - target) ** 2).flatten(1).mean(1)
        weight = loss_weight(t, self.schedule, self.prediction, self.weighting, min_snr_gamma=self.min_snr_gamma,
                             sigma_data=self.sigma_data)
        return per_example * per_sample(weight, per_example)


def embedding_guided(denoiser: NetworkDenoiser, scale: float, **options) -> GuidedDenoiser:
    """CFG on the zero embedding: ``eps = eps(x, 0) + w (eps(x, z) - eps(x, 0))`` (Ho & Salimans 2022, eq. 6);
    ``w = 1`` is the conditional decoder, ``w = 0`` the unconditional one."""
    return GuidedDenoiser(denoiser, scale, null_condition=_null_condition, **options)


def decode_embeddings(denoiser: NetworkDenoiser, z: torch.Tensor, *, guidance: float = 3.0, steps: int = 20,
                      seed: int = 0, sampler: str | None = None, clip_denoised: bool = True) -> torch.Tensor:
    """Images (N, C, S, S) in [-1, 1] for image embeddings ``z`` (N, E): the decoder under CFG at ``guidance``
    (``embedding_guided``), static thresholding of x0_hat to [-1, 1] (as ``text_conditioning.text_to_image``),
    the default sampler (or ``sampler``) on the default grid at ``steps`` steps, prior noise drawn with ``seed``.
    NFE: ``steps`` (x2 batch under guidance)."""
    from ..core.noise import prior_sample
    from ..samplers import DEFAULT, default_timesteps, get_sampler

    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"z must be a non-empty (N, E) tensor; got {tuple(z.shape)}")
    cfg = denoiser.net.config
    shape = (len(z), cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    name = DEFAULT["sampler"] if sampler is None else sampler
    options = dict(DEFAULT["options"]) if sampler is None else {}
    ts = default_timesteps(denoiser, steps)
    x_T = prior_sample(denoiser.schedule, shape, torch.Generator().manual_seed(seed))
    guided = denoiser if guidance == 1.0 else embedding_guided(denoiser, guidance)
    if clip_denoised:
        guided = StaticThresholdDenoiser(guided)
    with torch.no_grad():
        x = get_sampler(name).fn(guided, x_T, ts, cond={"image_embedding": z.float()}, **options)
    return x.clamp(-1, 1)
