"""DiffTPT: test-time prompt tuning with diffusion-augmented views (Feng, Yu, Liu, Khan, Zuo; ICCV 2023,
arXiv 2308.06038), and its baseline TPT (Shu, Nie, Huang, Yu, Goldstein, Anandkumar, Xiao; NeurIPS 2022,
arXiv 2209.07511), on the zoo's small CLIP (``captions_clip``) and the captioned digits.

Per test image x (one at a time; nothing carries over to the next image):

1. **Prompt.** CoOp-style soft prompt (Zhou et al. 2022, arXiv 2109.01134): class k is the token sequence
   ``<bos> v_1 .. v_M k <eos>`` where the M context vectors v_m (the only learnable tensor) enter the frozen text
   encoder as input embeddings, shared by the 10 classes. They are initialised, for every image afresh, from the
   word embeddings of the training-caption phrase "a {thickness} {colour}" (the papers initialise from "a photo of
   a"); thickness and colour are read zero-shot from x by the frozen CLIP (prompts "a {t} {c} {k}" averaged over
   k), because every training caption names a colour and prompts without one score far worse.
   ``logits_k(v) = exp(s) * <f(x'), g(v, k)>`` with f, g the L2-normalised image / text embeddings.
2. **Views.** N views of x: x itself, ``n_aug`` standard augmentations (TPT: random resized crops, small shifts,
   colour jitter; no flips for digits) and, for DiffTPT, ``n_diffusion`` diffusion variations: SDEdit (Meng et al.
   2022, arXiv 2108.01073) with the zoo's ``captions_unet`` on the null caption, x_{t0} = alpha x + sigma eps at
   t0 = ``sdedit_t`` of the chain, then a few stochastic DDIM (eta = 1) steps to t_min.
3. **Cosine filter** (DiffTPT): keep the ceil(rho N) views whose cosine similarity to the original,
   cos(z_i, z_0), is highest, z = the view's logits under the initial prompt (the reference code; or its image
   embedding); rho = 0.8.
4. **Confidence selection** (TPT): of those, keep the ceil(tau n) views of lowest entropy H(p_i); tau = 0.3 here
   (TPT: 0.1 of 64 views).
5. **Tuning.** ``steps`` AdamW steps (lr 5e-3) on the entropy of the averaged prediction over the selected views,

       L(v) = H( (1/|S|) sum_{i in S} softmax(logits(x_i; v)) ),

   with the selection fixed after the first evaluation (as the TPT reference). The image tower, the text encoder
   and the temperature are frozen; only v receives gradient.
6. **Prediction**: the logits of the original image under the tuned prompt; then v is reset.

Views' randomness comes from a generator seeded by ``seed`` and a CRC of the image's bytes, so an image gets the
same views whatever came before it and whichever batch holds it.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DiffTPTConfig", "DIFFTPT_DEFAULTS", "TPT_DEFAULTS", "PromptTuner", "DiffTPT", "build", "build_tpt",
           "build_zero_shot", "test_data", "augment_views", "sdedit_views", "cosine_filter", "select_confident",
           "marginal_entropy", "image_generator"]

NUM_CLASSES = 10


@dataclass(frozen=True)
class DiffTPTConfig:
    """Settings of :class:`DiffTPT`. ``rho`` = None switches the cosine filter off; ``steps`` = 0 with no views is
    zero-shot CLIP with the initial prompt. ``similarity``: "logits" (DiffTPT's code) or "embedding"."""

    n_aug: int = 7
    n_diffusion: int = 8
    rho: float | None = 0.8
    tau: float = 0.3
    steps: int = 4
    lr: float = 5e-3
    sdedit_t: float = 0.2
    sdedit_steps: int = 4
    similarity: str = "logits"
    crop_scale: tuple[float, float] = (0.9, 1.0)
    max_shift: float = 0.04
    jitter: float = 0.2

    def __post_init__(self):
        for name in ("n_aug", "n_diffusion", "steps", "sdedit_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0; got {value!r}")
        if self.sdedit_steps < 1:
            raise ValueError(f"sdedit_steps must be >= 1; got {self.sdedit_steps}")
        if self.rho is not None and not 0 < self.rho <= 1:
            raise ValueError(f"rho must be in (0, 1] or None; got {self.rho}")
        if not 0 < self.tau <= 1 or not self.lr > 0 or not 0 < self.sdedit_t <= 1:
            raise ValueError(f"need 0 < tau <= 1, lr > 0 and 0 < sdedit_t <= 1; got {self.tau}, {self.lr}, "
                             f"{self.sdedit_t}")
        if self.similarity not in ("logits", "embedding"):
            raise ValueError(f"similarity must be 'logits' or 'embedding'; got {self.similarity!r}")


DIFFTPT_DEFAULTS = DiffTPTConfig()
#: TPT: augmentation views only (as many as DiffTPT's augmentation + diffusion views), no cosine filter.
TPT_DEFAULTS = replace(DIFFTPT_DEFAULTS, n_aug=DIFFTPT_DEFAULTS.n_aug + DIFFTPT_DEFAULTS.n_diffusion, n_diffusion=0,
                       rho=None)


# --- the selection rules and the loss ---------------------------------------------------------------------------

def cosine_filter(features: torch.Tensor, reference: torch.Tensor, rho: float) -> torch.Tensor:
    """DiffTPT's fidelity filter (arXiv 2308.06038, Sec. 3.3): indices (sorted) of the ceil(rho n) rows of
    ``features`` (n, D) with the highest cosine similarity cos(z_i, z_ref) to ``reference`` (D,); ties go to the
    lower index."""
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1]; got {rho}")
    sim = F.cosine_similarity(features.double(), reference.double()[None], dim=1)
    keep = math.ceil(rho * len(features) - 1e-9)
    order = torch.sort(-sim, stable=True).indices
    return order[:keep].sort().values


def select_confident(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """TPT's confidence selection (arXiv 2209.07511, Sec. 3.2): indices (sorted) of the ceil(tau n) rows of
    ``logits`` (n, K) whose softmax entropy H(p_i) = -sum_k p_ik log p_ik is lowest; ties go to the lower index."""
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1]; got {tau}")
    logp = F.log_softmax(logits.double(), dim=1)
    entropy = -(logp.exp() * logp).sum(1)
    keep = math.ceil(tau * len(logits) - 1e-9)
    return torch.sort(entropy, stable=True).indices[:keep].sort().values


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the averaged prediction (TPT eq. 2): H(p_bar), p_bar = (1/n) sum_i softmax(logits_i), computed in
    log space as log p_bar = logsumexp_i(log p_i) - log n. ``logits`` (n, K) -> scalar."""
    logp = F.log_softmax(logits, dim=1)
    log_mean = torch.logsumexp(logp, dim=0) - math.log(len(logits))
    return -(log_mean.exp() * log_mean).sum()


# --- views ------------------------------------------------------------------------------------------------------

def augment_views(x: torch.Tensor, n: int, generator: torch.Generator, *, crop_scale=(0.9, 1.0),
                  max_shift: float = 0.04, jitter: float = 0.2) -> torch.Tensor:
    """TPT's conventional views of one image ``x`` (1, C, S, S) in [-1, 1] -> (n, C, S, S), adapted to digits.

    Random resized crop (area fraction a ~ U(crop_scale), aspect r ~ exp U(log 3/4, log 4/3), crop w = sqrt(a r),
    h = sqrt(a / r) of the side, centred uniformly where it fits) resized back to S by bilinear sampling, plus a
    shift of up to ``max_shift`` of the side (black border); colour jitter on the [0, 1] intensity: brightness
    b ~ U(1 -/+ jitter) scales it, contrast c ~ U(1 -/+ jitter) about the image mean, saturation s ~ U(1 -/+ jitter)
    about the grey level, then clipped. No flips (a flipped digit is another glyph).
    """
    if n == 0:
        return x.new_zeros((0, *x.shape[1:]))
    u = torch.rand(n, 8, generator=generator, dtype=torch.float64)
    area = crop_scale[0] + (crop_scale[1] - crop_scale[0]) * u[:, 0]
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1])
    w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    cx = (1 - w) * (2 * u[:, 2] - 1) + max_shift * 2 * (2 * u[:, 4] - 1)  # normalised coords, the side is 2 long
    cy = (1 - h) * (2 * u[:, 3] - 1) + max_shift * 2 * (2 * u[:, 5] - 1)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = F.affine_grid(theta.to(x.dtype), [n, *x.shape[1:]], align_corners=False)
    v = F.grid_sample((x.expand(n, -1, -1, -1) + 1) / 2, grid, mode="bilinear", padding_mode="zeros",
                      align_corners=False)  # (n, C, S, S) in [0, 1], black outside
    factors = (1 - jitter + 2 * jitter * torch.rand(n, 3, generator=generator, dtype=torch.float64)).to(x.dtype)
    brightness, contrast, saturation = (factors[:, i].view(n, 1, 1, 1) for i in range(3))
    v = v * brightness
    v = (v - v.mean((1, 2, 3), keepdim=True)) * contrast + v.mean((1, 2, 3), keepdim=True)
    grey = v.mean(1, keepdim=True)
    v = (v - grey) * saturation + grey
    return v.clamp(0, 1) * 2 - 1


def image_generator():
    """The zoo's ``captions_unet`` text-to-image denoiser (24 x 24 RGB captioned digits, eps prediction, linear VP
    schedule), whose null-caption branch makes DiffTPT's image variations."""
    from ... import zoo

    return zoo.load("captions_unet")


@torch.no_grad()
def sdedit_views(denoiser, x: torch.Tensor, n: int, generator: torch.Generator, *, t0: float = 0.4,
                 steps: int = 4) -> torch.Tensor:
    """n diffusion variations of one image ``x`` (1, C, S, S) -> (n, C, S, S) in [-1, 1] by SDEdit (Meng et al.
    2022, arXiv 2108.01073; ``methods.cyclediffusion.sdedit``): x_{t0} = alpha_{t0} x + sigma_{t0} eps, then
    ``steps`` uniform stochastic DDIM (eta = 1) steps to t_min under the null caption "" (the unconditional branch
    of the caption-dropout model) with static thresholding of x0_hat to [-1, 1]. ``steps`` NFE on a batch of n.
    DiffTPT draws Stable-Diffusion image variations conditioned on the CLIP image embedding; our text-to-image model
    has no image conditioning, so a partial forward-reverse chain from x itself plays that role."""
    from ..cyclediffusion import sdedit, translation_grid
    from ..text_conditioning import NULL_CAPTION
    from ..thresholding import StaticThresholdDenoiser

    if n == 0:
        return x.new_zeros((0, *x.shape[1:]))
    cond = denoiser.condition([NULL_CAPTION] * n)
    ts = translation_grid(denoiser.schedule, steps, t_start=t0)
    out = sdedit(StaticThresholdDenoiser(denoiser), x.expand(n, -1, -1, -1).contiguous(), ts, cond=cond,
                 generator=generator)
    return out.clamp(-1, 1)


# --- the soft prompt --------------------------------------------------------------------------------------------

class PromptTuner:
    """Zero-shot digit classification by the frozen CLIP with a CoOp soft prompt of ``context_words`` length.

    ``class_embeddings(context (M, W)) -> (10, E)``: the text embeddings of ``<bos> v_1..v_M k <eos>``, k = 0..9;
    ``logits(image_emb (n, E), context) -> (n, 10) = exp(s) image_emb @ class_embeddings^T`` (s = CLIP's
    log-temperature, clamped to log 100); ``initial_context(image_emb (E,)) -> (M, W)``: the word embeddings of
    "a {thickness} {colour}" read zero-shot from the image (see the module docstring).
    """

    def __init__(self, clip, tokenizer=None):
        from ...data.captioned import COLOURS, THICKNESSES

        self.clip = clip.eval().requires_grad_(False)
        self.tokenizer = tokenizer or clip.tokenizer
        self.width = clip.text_encoder.width
        self.num_context = 3  # "a", thickness, colour
        tokens, self.mask = self.tokenizer.encode([f"a thin white {k}" for k in range(NUM_CLASSES)])
        self.tokens = tokens  # (10, L): <bos> a thin white k <eos>; positions 1..3 are overwritten by the context
        with torch.no_grad():
            self.word_embeddings = clip.text_encoder.token_embedding(tokens)  # (10, L, W)
            self.attribute_words = [(t, c) for c in COLOURS for t in THICKNESSES]
            attribute_emb = []
            for t, c in self.attribute_words:  # each attribute prompt averaged over the 10 digits
                emb = clip.encode_text(*self.tokenizer.encode([f"a {t} {c} {k}" for k in range(NUM_CLASSES)]))
                attribute_emb.append(F.normalize(emb.mean(0), dim=0))
            self.attribute_embeddings = torch.stack(attribute_emb)  # (14, E)
        self.logit_scale = float(clip.logit_scale.detach().clamp(max=math.log(100)).exp())

    @torch.no_grad()
    def initial_context(self, image_emb: torch.Tensor) -> torch.Tensor:
        """Word embeddings (3, W) of "a {t} {c}", (t, c) = argmax of the image's similarity to the attribute
        prompts."""
        t, c = self.attribute_words[int((self.attribute_embeddings @ image_emb).argmax())]
        ids = [self.tokenizer.stoi[w] for w in ("a", t, c)]
        return self.clip.text_encoder.token_embedding.weight[ids].clone()

    def class_embeddings(self, context: torch.Tensor) -> torch.Tensor:
        embeddings = torch.cat([self.word_embeddings[:, :1], context.expand(NUM_CLASSES, -1, -1),
                                self.word_embeddings[:, 1 + self.num_context:]], dim=1)
        return self.clip.encode_text(self.tokens, self.mask, embeddings)

    def logits(self, image_emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * image_emb @ self.class_embeddings(context).t()


class DiffTPT:
    """The DiffTPT / TPT adapter (see the module docstring); ``predict(x (B, 3, 24, 24)) -> logits (B, 10)`` tunes
    the prompt on each image separately and resets it; ``reset()`` restores the initial context.

    ``context`` is the learnable (3, W) tensor; after every image it equals ``default_context`` bit-exactly.
    ``last_losses`` holds the marginal entropy at each step of the last image plus the value after the last step;
    ``last_kept`` the number of views after the cosine filter and the confidence selection. Set ``trace`` to a list
    to collect, per image, the views' logits under the initial prompt (``view_logits`` (N, 10), the original first,
    then the ``n_aug`` augmentation and ``n_diffusion`` diffusion views), ``kept`` and ``losses``.
    """

    def __init__(self, clip, config: DiffTPTConfig = DIFFTPT_DEFAULTS, *, generator_model=None, seed: int = 0,
                 name: str = "difftpt"):
        if config.n_diffusion > 0 and generator_model is None:
            raise ValueError("diffusion views need generator_model (e.g. image_generator())")
        self.config, self.seed, self.name = config, int(seed), name
        self.prompt = PromptTuner(clip)
        self.generator_model = generator_model
        self.default_context = self.prompt.word_embeddings[0, 1:1 + self.prompt.num_context].clone()
        self.context = torch.nn.Parameter(self.default_context.clone())
        self.last_losses: list[float] = []
        self.last_kept: tuple[int, int] = (0, 0)
        self.trace: list | None = None

    def reset(self) -> None:
        with torch.no_grad():
            self.context.copy_(self.default_context)

    def _generator(self, image: torch.Tensor) -> torch.Generator:
        crc = zlib.crc32(np.ascontiguousarray(image.detach().cpu().float().numpy()).tobytes())
        return torch.Generator().manual_seed(self.seed * 1_000_003 + crc)

    def views(self, image: torch.Tensor) -> torch.Tensor:
        """The original (1, C, S, S), then its augmentation and diffusion views: (1 + n_aug + n_diffusion, C, S, S)."""
        cfg, g = self.config, self._generator(image)
        aug = augment_views(image, cfg.n_aug, g, crop_scale=cfg.crop_scale, max_shift=cfg.max_shift, jitter=cfg.jitter)
        parts = [image, aug]
        if cfg.n_diffusion:
            parts.append(sdedit_views(self.generator_model, image, cfg.n_diffusion, g, t0=cfg.sdedit_t,
                                      steps=cfg.sdedit_steps))
        return torch.cat(parts)

    def select(self, image_emb: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Indices of the views kept by the cosine filter (if ``rho``) then the confidence selection."""
        keep = torch.arange(len(logits))
        if self.config.rho is not None:
            features = logits if self.config.similarity == "logits" else image_emb
            keep = cosine_filter(features, features[0], self.config.rho)
        chosen = keep[select_confident(logits[keep], self.config.tau)]
        self.last_kept = (len(keep), len(chosen))
        return chosen

    def adapt_one(self, image: torch.Tensor) -> torch.Tensor:
        """Tune the prompt on one image (1, C, S, S) and return its logits (1, 10); the context is reset after."""
        cfg = self.config
        with torch.no_grad():
            views = self.views(image)
            emb = self.prompt.clip.encode_image(views)  # (N, E), fixed: only the text side depends on the prompt
            self.context.copy_(self.prompt.initial_context(emb[0]))
        self.last_losses, self.last_kept = [], (0, 0)
        with torch.no_grad():
            view_logits = self.prompt.logits(emb, self.context)
        if cfg.steps > 0 and len(views) > 1:
            optimizer = torch.optim.AdamW([self.context], lr=cfg.lr)  # a fresh optimizer state per image
            selected = emb[self.select(emb, view_logits)]
            for _ in range(cfg.steps):
                loss = marginal_entropy(self.prompt.logits(selected, self.context))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                self.last_losses.append(float(loss.detach()))
            with torch.no_grad():
                self.last_losses.append(float(marginal_entropy(self.prompt.logits(selected, self.context))))
        with torch.no_grad():
            logits = self.prompt.logits(emb[:1], self.context)
        if self.trace is not None:
            self.trace.append({"view_logits": view_logits, "kept": self.last_kept, "losses": list(self.last_losses)})
        self.reset()
        return logits

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 10) of images (B, 3, S, S) in [-1, 1], each tuned on its own views (episodic, per image)."""
        if x.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W); got {tuple(x.shape)}")
        return torch.cat([self.adapt_one(x[i:i + 1]) for i in range(len(x))]) if len(x) else x.new_zeros(0, 10)


# --- factories (the TTA method contract) and data ----------------------------------------------------------------

#: ``quick=True``: fewer views, sampler steps and tuning steps (tests, quick benches); TPT gets the same view count.
QUICK_OVERRIDES = {"n_aug": 3, "n_diffusion": 4, "sdedit_steps": 3, "steps": 2}
TPT_QUICK_OVERRIDES = {"n_aug": 7, "steps": 2}


def _make(classifier, config: DiffTPTConfig, overrides: dict, *, seed: int, name: str, generator_model=None
          ) -> DiffTPT:
    from ... import zoo

    fields = set(asdict(config))
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown DiffTPT setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
    config = replace(config, **overrides)
    clip = zoo.load("captions_clip") if classifier is None else classifier
    if config.n_diffusion and generator_model is None:
        generator_model = image_generator()
    return DiffTPT(clip, config, generator_model=generator_model, seed=seed, name=name)


def build(classifier=None, *, quick: bool = False, seed: int = 0, generator_model=None, **overrides) -> DiffTPT:
    """DiffTPT with :data:`DIFFTPT_DEFAULTS` (``quick``: :data:`QUICK_OVERRIDES`) on the loaded ``captions_clip``
    ``classifier`` (None: load it); ``overrides`` are :class:`DiffTPTConfig` fields. Loads the zoo's
    ``captions_unet`` for the diffusion views unless ``generator_model`` is given."""
    return _make(classifier, DIFFTPT_DEFAULTS, {**(QUICK_OVERRIDES if quick else {}), **overrides}, seed=seed,
                 name="difftpt", generator_model=generator_model)


def build_tpt(classifier=None, *, quick: bool = False, seed: int = 0, **overrides) -> DiffTPT:
    """TPT (arXiv 2209.07511): :data:`TPT_DEFAULTS`, augmentation views only, no cosine filter."""
    return _make(classifier, TPT_DEFAULTS, {**(TPT_QUICK_OVERRIDES if quick else {}), **overrides}, seed=seed,
                 name="tpt")


def build_zero_shot(classifier=None, *, quick: bool = False, seed: int = 0, **overrides) -> DiffTPT:
    """Zero-shot CLIP with the initial prompt "a {t} {c} k" (no views, no tuning; ``quick`` changes nothing)."""
    config = replace(DIFFTPT_DEFAULTS, n_aug=0, n_diffusion=0, rho=None, steps=0)
    return _make(classifier, config, overrides, seed=seed, name="zero_shot")


def test_data(split: str = "test", n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, 3, 24, 24) in [-1, 1], digit labels (n,)) of the single-digit images of a captioned-digits split
    (``make_captioned_digits``; two-digit images are skipped: their "digit" is ambiguous). ``n`` None: every
    single-digit image of the split's default size (about half of it); otherwise the first n (a larger split is
    generated if the default one holds fewer)."""
    from ...data.captioned import DEFAULT_N, make_captioned_digits

    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int or None; got {n!r}")
    total = DEFAULT_N.get(split, 1000)  # a fixed size first, so test_data(n=m) is the start of test_data()
    while True:
        data = make_captioned_digits(split, n=total, seed=seed)
        single = (data.attributes["num_digits"] == 1).nonzero().squeeze(1)
        if n is None or len(single) >= n:
            single = single if n is None else single[:n]
            return data.images[single], data.attributes["digit_0"][single]
        total *= 2
