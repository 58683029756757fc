"""Text-to-image diffusion: a denoiser conditioned on a caption through cross-attention, trained with caption
dropout and sampled with classifier-free guidance on the null (empty) caption.

* Conditioning (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models", arXiv
  2112.10752, §3.3; Saharia et al. 2022, Imagen, arXiv 2205.11487, §2.1-2.2): a frozen text encoder maps the
  caption tokens to hidden states ``c = tau(y)`` (B, L, D); the network attends to them with cross-attention
  (``nets.UNet(context_dim=D)`` or ``nets.dit.DiT(context_dim=D)``), padding tokens masked out.
* Training (``TextDiffusionLoss``): the usual per-example loss ``|| F(x_t, t, c) - target ||^2`` (``DiffusionLoss``)
  with the caption replaced by the null caption "" (``<bos><eos>``) with probability ``caption_dropout`` = 0.1, so
  one network is both p(x | y) and p(x) (Ho & Salimans 2022, arXiv 2207.12598, Algorithm 1).
* Sampling: ``eps = eps(x, c_null) + w (eps(x, c) - eps(x, c_null))`` (Ho & Salimans eq. 6) through
  ``methods.guidance.GuidedDenoiser`` with ``null_condition=NullCaption(...)``, so every sampler (and rescale,
  guidance intervals) runs on it unchanged. ``text_to_image`` draws images for a list of captions.

The denoiser's condition is ``{"context": (B, L, D) float, "context_mask": (B, L) bool, True = keep}``; captions are
turned into it once per batch (``TextConditionedDenoiser.condition``), not at every network call.
"""

from __future__ import annotations

import torch

from ..core import noise
from ..core._tensor import per_sample
from ..core.denoiser import NetworkDenoiser
from ..core.predictions import prediction_from_x0_eps
from ..training.losses import DiffusionLoss, _per_example, loss_weight, sample_times
from .guidance import GuidedDenoiser
from .thresholding import StaticThresholdDenoiser

__all__ = ["NULL_CAPTION", "NullCaption", "TextConditionedDenoiser", "TextDiffusionLoss", "encode_captions",
           "text_guided", "text_to_image"]

NULL_CAPTION = ""  # encodes to <bos><eos>: the unconditional "caption" of classifier-free guidance


def _tokens_and_mask(tokenizer, captions, max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
        raise ValueError("captions must be a list of strings")
    return tokenizer.encode(list(captions), max_len=max_len)


def encode_captions(captions: list[str], tokenizer, text_encoder: torch.nn.Module, *,
                    max_len: int | None = None) -> dict:
    """``{"context": tau(y) (B, L, D), "context_mask": (B, L) bool}`` of ``captions`` under the frozen
    ``text_encoder`` (``forward(tokens, mask) -> (hidden, pooled)``, e.g. ``nets.text.TextEncoder`` or the CLIP text
    tower); no gradient flows into the encoder."""
    tokens, mask = _tokens_and_mask(tokenizer, captions, max_len)
    device = next(text_encoder.parameters()).device
    with torch.no_grad():
        hidden, _ = text_encoder(tokens.to(device), mask.to(device))
    return {"context": hidden, "context_mask": mask.to(device)}


class NullCaption:
    """The ``null_condition`` of ``GuidedDenoiser`` for text: the encoded empty caption, broadcast to the call's
    batch and padded (zeros, mask False) to its context length L, so it concatenates with the caption batch.

    ``NullCaption(context (1, L0, D), context_mask (1, L0))``; ``__call__(cond) -> {"context": (B, L, D),
    "context_mask": (B, L)}``. Padding changes nothing: masked tokens get zero attention weight.
    """

    def __init__(self, context: torch.Tensor, context_mask: torch.Tensor):
        if context.ndim != 3 or context.shape[0] != 1 or tuple(context_mask.shape) != tuple(context.shape[:2]):
            raise ValueError("NullCaption needs context (1, L0, D) and context_mask (1, L0)")
        kept = int(context_mask.sum())
        self.context, self.context_mask = context[:, :kept], context_mask[:, :kept].bool()

    def __call__(self, cond: dict) -> dict:
        if "context" not in cond or "context_mask" not in cond:
            raise ValueError("text guidance needs context and context_mask in the condition")
        context = cond["context"]
        b, length = context.shape[:2]
        kept = self.context.shape[1]
        if length < kept:
            raise ValueError(f"context length {length} is shorter than the null caption's {kept} tokens")
        null = torch.zeros_like(context)
        null[:, :kept] = self.context.to(context)
        mask = torch.zeros_like(cond["context_mask"], dtype=torch.bool)
        mask[:, :kept] = self.context_mask.to(mask.device)
        return {"context": null, "context_mask": mask}


class TextConditionedDenoiser(NetworkDenoiser):
    """A ``NetworkDenoiser`` of a cross-attention network (``net(x, t, context=, context_mask=)``) together with the
    tokenizer and frozen text encoder that make its context.

    ``condition(captions) -> cond`` (to pass to samplers as ``cond=``), ``null_condition`` (a ``NullCaption`` of
    ``""``) and ``guided(scale, **options) -> GuidedDenoiser``. Denoising itself is ``NetworkDenoiser``'s.
    """

    def __init__(self, net: torch.nn.Module, schedule, prediction: str = "eps", *, tokenizer,
                 text_encoder: torch.nn.Module, max_len: int | None = None, **kwargs):
        super().__init__(net, schedule, prediction, **kwargs)
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.max_len = max_len
        self.null_condition = NullCaption(**encode_captions([NULL_CAPTION], tokenizer, self.text_encoder))

    def condition(self, captions: list[str]) -> dict:
        """``encode_captions`` with this denoiser's tokenizer and encoder, on the network's device."""
        cond = encode_captions(captions, self.tokenizer, self.text_encoder, max_len=self.max_len)
        device = next(self.net.parameters()).device
        return {k: v.to(device) for k, v in cond.items()}

    def guided(self, scale: float, **options) -> GuidedDenoiser:
        """CFG on the null caption at scale ``scale`` (``options``: GuidedDenoiser's ``rescale``, ``interval``)."""
        return text_guided(self, scale, **options)


def text_guided(denoiser: NetworkDenoiser, scale: float, null_condition: NullCaption | None = None,
                **options) -> GuidedDenoiser:
    """``GuidedDenoiser`` with the null caption as the unconditional branch (Ho & Salimans 2022, eq. 6):
    ``eps = eps(x, c_null) + w (eps(x, c) - eps(x, c_null))``; ``w = 1`` is the caption-conditional model, ``w = 0``
    the null-caption model. ``null_condition`` defaults to ``denoiser.null_condition``."""
    null_condition = getattr(denoiser, "null_condition", None) if null_condition is None else null_condition
    if null_condition is None:
        raise ValueError("text guidance needs a null_condition (a NullCaption) or a TextConditionedDenoiser")
    return GuidedDenoiser(denoiser, scale, null_condition=null_condition, **options)


class TextDiffusionLoss(DiffusionLoss):
    """Per-example text-to-image denoising loss with caption dropout (a ``Trainer`` loss function).

    Batch = ``(x0, tokens (B, L), token_mask (B, L))``. With ``t ~ p(t)``, ``eps ~ N(0, I)``, ``x_t = alpha_t x0 +
    sigma_t eps`` and ``y'`` the caption, replaced by the null caption "" with probability ``caption_dropout``:

        L_i = w(t_i) mean_j (F(x_t, t_i, tau(y'_i))_j - target_j)^2,

    ``tau`` the frozen ``text_encoder`` (no gradient, eval mode), ``F`` the network through
    ``NetworkDenoiser.raw``, the target and weighting as in ``DiffusionLoss``. Random draws: t, eps, then the
    dropout coins (one generator or one per example, like ``class_condition``).
    """

    def __init__(self, schedule, text_encoder: torch.nn.Module, tokenizer, prediction: str = "eps", *,
                 caption_dropout: float = 0.1, **kwargs):
        if not 0 <= caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1); got {caption_dropout}")
        super().__init__(schedule, prediction, **kwargs)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.caption_dropout = float(caption_dropout)
        self.null_tokens, self.null_mask = _tokens_and_mask(tokenizer, [NULL_CAPTION])

    def config(self) -> dict:
        return {**super().config(), "caption_dropout": self.caption_dropout}

    def drop_captions(self, tokens: torch.Tensor, mask: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace each row by the null caption (padded to L) with probability ``caption_dropout``."""
        if self.caption_dropout == 0:
            return tokens, mask
        b, length = tokens.shape
        drop = _per_example(generator, b, lambda n, g: torch.rand(n, generator=g)) < self.caption_dropout
        drop = drop.to(tokens.device)[:, None]
        null_tokens = torch.full_like(tokens, self.tokenizer.pad_id)
        null_mask = torch.zeros_like(mask, dtype=torch.bool)
        kept = self.null_tokens.shape[1]
        null_tokens[:, :kept] = self.null_tokens.to(tokens.device)
        null_mask[:, :kept] = self.null_mask.to(tokens.device)
        return torch.where(drop, null_tokens, tokens), torch.where(drop, null_mask, mask.bool())

    def __call__(self, net: torch.nn.Module, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        if len(batch) != 3:
            raise ValueError("a text-to-image batch is (images, tokens, token_mask)")
        x0, tokens, mask = batch
        b = x0.shape[0]
        t = sample_times(self.schedule, b, generator, method=self.time_sampling).to(x0.device)
        eps = noise.randn(x0.shape, generator, dtype=x0.dtype).to(x0.device)
        x_t = self.schedule.add_noise(x0, t, eps)
        tokens, mask = self.drop_captions(tokens, mask, generator)
        self.text_encoder.to(x0.device)
        with torch.no_grad():
            context, _ = self.text_encoder(tokens, mask)
        out = self.denoiser(net).raw(x_t, t, context=context, context_mask=mask)
        target = prediction_from_x0_eps(x0, eps, t, self.schedule, self.prediction, sigma_data=self.sigma_data)
        per_example = ((out - target) ** 2).flatten(1).mean(1)
        weight = loss_weight(t, self.schedule, self.prediction, self.weighting, min_snr_gamma=self.min_snr_gamma,
                             sigma_data=self.sigma_data)
        return per_example * per_sample(weight, per_example)

    def text_denoiser(self, net: torch.nn.Module) -> TextConditionedDenoiser:
        """The ``TextConditionedDenoiser`` this loss trains ``net`` to be (same encoder, tokenizer, prediction)."""
        return TextConditionedDenoiser(net, self.schedule, self.prediction, tokenizer=self.tokenizer,
                                       text_encoder=self.text_encoder, scale_input=self.scale_input,
                                       sigma_data=self.sigma_data)


def text_to_image(denoiser: TextConditionedDenoiser, captions: list[str], *, guidance: float = 3.0,
                  steps: int | None = None, sampler: str | None = None, seed: int = 0, rescale: float = 0.0,
                  timesteps: torch.Tensor | None = None, clip_denoised: bool = True) -> torch.Tensor:
    """Images for ``captions`` (one each), clipped to [-1, 1]: CFG on the null caption at scale ``guidance``
    (``text_guided``), sampled by ``sampler`` (default ``samplers.DEFAULT["sampler"]`` with its options) on
    ``timesteps`` (default ``default_timesteps(denoiser, steps)``) from prior noise drawn with ``seed``.

    ``clip_denoised``: static thresholding of the guided x0_hat to [-1, 1] at every evaluation
    (``methods.thresholding.StaticThresholdDenoiser``; Ho et al. 2020's ``clip_denoised``, Saharia et al. 2022
    §2.3). An eps-predicting pixel model's x0_hat = (x - sigma eps_hat) / alpha amplifies eps errors by sigma/alpha
    (~150 at t = 1 on the linear schedule); on the captioned digits without it, the first steps' x0_hat (std ~20)
    pushed the trajectory off the data and samples ended as noise.

    Shapes: N captions -> (N, C, S, S) with C, S from the network's config (``in_channels``, ``image_size``).
    """
    from ..core.noise import prior_sample
    from ..samplers import DEFAULT, default_timesteps, get_sampler

    if not captions:
        raise ValueError("captions must be a non-empty list of strings")
    cfg = getattr(denoiser.net, "config", {})
    shape = (len(captions), cfg.get("in_channels", 1), cfg.get("image_size", 8), cfg.get("image_size", 8))
    name = DEFAULT["sampler"] if sampler is None else sampler
    options = dict(DEFAULT["options"]) if sampler is None else {}
    ts = default_timesteps(denoiser, steps) if timesteps is None else timesteps
    cond = denoiser.condition(captions)
    device = next(denoiser.net.parameters()).device
    x_T = prior_sample(denoiser.schedule, shape, torch.Generator().manual_seed(seed)).to(device)
    guided = denoiser if guidance == 1.0 else text_guided(denoiser, guidance, rescale=rescale)
    if clip_denoised:
        guided = StaticThresholdDenoiser(guided)
    with torch.no_grad():
        x = get_sampler(name).fn(guided, x_T, ts, cond=cond, **options)
    return x.clamp(-1, 1)
