"""A small CLIP for the captioned digits: ViT image tower, transformer text tower, symmetric InfoNCE.

CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision",
arXiv 2103.00020): an image encoder f and a text encoder g map a batch of N matched (image, caption) pairs to
L2-normalised embeddings ``I_i = f(x_i) / |f(x_i)|``, ``T_j = g(c_j) / |g(c_j)|``; the logits are
``exp(s) I_i . T_j`` with a learnable log-temperature s (initialised to log(1 / 0.07)) and the loss is the
symmetric cross-entropy over the N x N logits (their Figure 3 pseudocode)::

    L = ( CE(logits, diag) + CE(logits^T, diag) ) / 2

The image tower is a ViT (Dosovitskiy et al. 2020, arXiv 2010.11929): ``patch_size`` patches -> a [CLS] token
and learned positions -> pre-LN blocks; its patch tokens (``image_patch_features``) double as a frozen
representation encoder. Evaluation: zero-shot attribute classification by scoring candidate captions, and
caption <-> image retrieval recall@k (both as in Sec. 3 of the paper, on our closed caption world).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .text import CaptionTokenizer, TextEncoder, TransformerBlock

__all__ = ["CLIPModel", "clip_loss", "train_clip", "zero_shot_accuracy", "retrieval_recall", "ZERO_SHOT_ATTRIBUTES"]

ZERO_SHOT_ATTRIBUTES = ("digit", "colour", "thickness")


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of Radford et al. 2021 (arXiv 2103.00020, Fig. 3): pair i of the batch is the positive.

    ``logits = exp(logit_scale) * image_emb @ text_emb^T`` (B, B);
    ``loss = (CE(logits, arange(B)) + CE(logits^T, arange(B))) / 2``. Embeddings (B, E) must be L2-normalised.
    """
    logits = logit_scale.exp() * image_emb @ text_emb.t()
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


class CLIPModel(nn.Module):
    """Image ViT + caption :class:`TextEncoder`, each followed by a linear projection to ``embed_dim``.

    ``encode_image(x (B, 3, S, S) in [-1, 1]) -> (B, E)`` and ``encode_text(tokens, mask) -> (B, E)`` are
    L2-normalised; ``image_patch_features(x) -> (B, (S / patch_size)^2, image_width)`` are the final-LayerNorm
    patch tokens (row-major); ``logit_scale`` is the learnable log-temperature, clamped to log(100) as in CLIP.
    ``text`` holds the :class:`TextEncoder` arguments (``vocab_size`` required).
    """

    def __init__(self, image_size: int = 24, embed_dim: int = 64, text: dict | None = None, patch_size: int = 4,
                 image_width: int = 64, image_depth: int = 3, image_heads: int = 4, image_mlp_ratio: float = 2.0,
                 in_channels: int = 3):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size ({image_size}) must be divisible by patch_size ({patch_size})")
        text = dict(text or {"vocab_size": CaptionTokenizer().vocab_size})
        text.pop("name", None)
        self.text_encoder = TextEncoder(**text)
        self.config = {"image_size": image_size, "embed_dim": embed_dim, "text": dict(self.text_encoder.config),
                       "patch_size": patch_size, "image_width": image_width, "image_depth": image_depth,
                       "image_heads": image_heads, "image_mlp_ratio": float(image_mlp_ratio),
                       "in_channels": in_channels}
        self.config["text"].pop("name")
        self.image_size, self.patch_size = image_size, patch_size
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, image_width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, image_width))
        self.image_positions = nn.Parameter(torch.randn(1, self.num_patches + 1, image_width) * 0.02)
        self.image_blocks = nn.ModuleList(TransformerBlock(image_width, image_heads, image_mlp_ratio)
                                          for _ in range(image_depth))
        self.image_norm = nn.LayerNorm(image_width)
        self.image_projection = nn.Linear(image_width, embed_dim, bias=False)
        self.text_projection = nn.Linear(self.text_encoder.width, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def _image_tokens(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (self.config["in_channels"], self.image_size, self.image_size):
            raise ValueError(f"images must be (B, {self.config['in_channels']}, {self.image_size}, {self.image_size});"
                             f" got {tuple(x.shape)}")
        h = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D), patches row-major
        h = torch.cat([self.cls_token.expand(len(h), -1, -1), h], dim=1) + self.image_positions
        for block in self.image_blocks:
            h = block(h)
        return self.image_norm(h)  # (B, 1 + N, D)

    def image_patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final-layer patch tokens (B, N, image_width), N = (image_size / patch_size)^2, without [CLS]."""
        return self._image_tokens(x)[:, 1:]

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embedding (B, embed_dim): projection of the [CLS] token."""
        return F.normalize(self.image_projection(self._image_tokens(x)[:, 0]), dim=-1)

    def encode_text(self, tokens: torch.Tensor, mask: torch.Tensor, token_embeddings: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """L2-normalised caption embedding (B, embed_dim): projection of the text encoder's <eos> state.
        ``token_embeddings`` (B, L, width) replace the looked-up word embeddings when given (soft prompts)."""
        return F.normalize(self.text_projection(self.text_encoder(tokens, mask, token_embeddings)[1]), dim=-1)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The symmetric InfoNCE loss (:func:`clip_loss`) of a batch of matched pairs."""
        scale = self.logit_scale.clamp(max=math.log(100))
        return clip_loss(self.encode_image(x), self.encode_text(tokens, mask), scale)


def _recaptioned(data, idx: torch.Tensor, rng: np.random.Generator) -> list[str]:
    from ..data.captioned import attribute_row, random_caption

    return [random_caption(attribute_row(data.attributes, i), rng) for i in idx.tolist()]


def train_clip(data, steps: int = 2000, batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
               progress: bool = False, *, model_config: dict | None = None, weight_decay: float = 0.05,
               warmup_steps: int = 100, recaption: bool = True, tokenizer: CaptionTokenizer | None = None):
    """Train a :class:`CLIPModel` on captioned digits (``data`` as from ``make_captioned_digits``) with the CLIP
    loss (Radford et al. 2021, arXiv 2103.00020): AdamW, linear warm-up then cosine decay, batches drawn without
    replacement per epoch. ``recaption`` draws a fresh caption template for each example each time it is seen
    (same attributes, different words). Returns ``(model in eval mode, history)`` with per-step ``loss``,
    ``logit_scale``, the training wall-clock ``seconds`` and process ``cpu_seconds`` (all threads).
    """
    from tqdm.auto import tqdm

    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    tokenizer = tokenizer or CaptionTokenizer()
    torch.manual_seed(seed)
    model = CLIPModel(**(model_config or {"text": {"vocab_size": tokenizer.vocab_size}}))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n and "positions" not in n]
    other = [p for n, p in model.named_parameters() if not any(p is q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / steps))))
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    batch_size = min(batch_size, len(data))
    history = {"loss": [], "logit_scale": []}
    order, cursor = torch.randperm(len(data), generator=gen), 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    model.train()
    for _ in tqdm(range(steps), disable=not progress, desc="clip", leave=False):
        if cursor + batch_size > len(data):
            order, cursor = torch.randperm(len(data), generator=gen), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        captions = _recaptioned(data, idx, rng) if recaption else [data.captions[i] for i in idx.tolist()]
        tokens, mask = tokenizer.encode(captions)
        loss = model(data.images[idx], tokens, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history["loss"].append(float(loss.detach()))
        history["logit_scale"].append(float(model.logit_scale.detach()))
    history["seconds"], history["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - cpu0
    return model.eval(), history


@torch.no_grad()
def _embed_captions(model: CLIPModel, tokenizer: CaptionTokenizer, captions: list[str], chunk: int = 2048):
    out = []
    for i in range(0, len(captions), chunk):
        out.append(model.encode_text(*tokenizer.encode(captions[i:i + chunk])))
    return torch.cat(out)


@torch.no_grad()
def _embed_images(model: CLIPModel, images: torch.Tensor, chunk: int = 1024):
    return torch.cat([model.encode_image(images[i:i + chunk]) for i in range(0, len(images), chunk)])


@torch.no_grad()
def zero_shot_accuracy(model: CLIPModel, tokenizer: CaptionTokenizer, data, attribute: str = "digit") -> float:
    """Zero-shot accuracy of classifying the first digit's ``attribute`` ("digit", "colour" or "thickness").

    As CLIP's zero-shot classifier (Radford et al. 2021, arXiv 2103.00020, Sec. 3.1.2): for each image, one
    candidate caption per value of the attribute — the image's canonical caption (``caption_for``) with only the
    first (left or only) digit's attribute replaced — and the prediction is the candidate of highest cosine
    similarity. Chance is 1/10 (digit), 1/7 (colour), 1/2 (thickness).
    """
    from ..data.captioned import COLOURS, THICKNESSES, attribute_row, caption_for

    values = {"digit": range(10), "colour": range(len(COLOURS)), "thickness": range(len(THICKNESSES))}
    if attribute not in values:
        raise ValueError(f"attribute must be one of {', '.join(values)}; got {attribute!r}")
    key = f"{attribute}_0"
    candidates = list(values[attribute])
    image_emb = _embed_images(model, data.images)
    captions = []
    for i in range(len(data)):
        row = attribute_row(data.attributes, i)
        captions += [caption_for({**row, key: v}) for v in candidates]
    text_emb = _embed_captions(model, tokenizer, captions).view(len(data), len(candidates), -1)
    scores = torch.einsum("ne,nke->nk", image_emb, text_emb)
    truth = data.attributes[key]
    return float((torch.tensor(candidates)[scores.argmax(1)] == truth).double().mean())


@torch.no_grad()
def retrieval_recall(model: CLIPModel, tokenizer: CaptionTokenizer, data, k=(1, 5), batch: int = 100
                     ) -> dict[str, float]:
    """Caption -> image and image -> caption recall@k within consecutive galleries of ``batch`` pairs.

    Within each gallery (the last, partial one is dropped unless it is the only one), every caption ranks the
    gallery's images by cosine similarity (and every image the captions); a query is a hit at k if one of its top
    k items has exactly the query's attributes (same digits, colours, thicknesses, positions), so identical
    captions in one gallery are not counted as misses. Returns ``{"text_to_image@k": ..., "image_to_text@k": ...}``.
    """
    from ..data.captioned import ATTRIBUTE_KEYS

    keys = [key for key in ATTRIBUTE_KEYS if not key.startswith("source")]
    signature = torch.stack([data.attributes[key] for key in keys], dim=1)  # (N, A)
    image_emb = _embed_images(model, data.images)
    text_emb = _embed_captions(model, tokenizer, list(data.captions))
    n = len(data) if len(data) < batch else len(data) // batch * batch
    hits = {f"{d}@{kk}": [] for d in ("text_to_image", "image_to_text") for kk in k}
    for start in range(0, n, batch):
        sl = slice(start, min(start + batch, n))
        sim = text_emb[sl] @ image_emb[sl].t()  # (captions, images)
        same = (signature[sl][:, None, :] == signature[sl][None, :, :]).all(-1)  # (b, b) symmetric
        for kk in k:
            kk_ = min(kk, sim.shape[1])
            top_images = sim.topk(kk_, dim=1).indices
            top_captions = sim.t().topk(kk_, dim=1).indices
            hits[f"text_to_image@{kk}"].append(same.gather(1, top_images).any(1))
            hits[f"image_to_text@{kk}"].append(same.gather(1, top_captions).any(1))
    return {name: float(torch.cat(v).double().mean()) for name, v in hits.items()}
