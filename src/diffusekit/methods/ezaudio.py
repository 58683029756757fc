"""EzAudio (Hai et al. 2024, "EzAudio: Enhancing Text-to-Audio Generation with Efficient Diffusion Transformer",
arXiv 2409.10819) at CPU scale: text-to-audio and audio inpainting with one 1-D DiT over log-mel frames.

The paper's diffusion choices, each used here as the paper states it:

* **v-prediction** (Salimans & Ho 2022, arXiv 2202.00512): the network predicts v = alpha_t eps - sigma_t x0, and
  x0_hat = alpha_t x_t - sigma_t v_hat, which stays defined where alpha_t = 0 (eps-prediction does not).
* **Zero terminal SNR** (Lin et al. 2023, arXiv 2305.08891, Alg. 1): scaled-linear betas 0.00085 -> 0.012 over
  1000 steps, sqrt(abar) shifted and rescaled so abar_T = 0 exactly (``ezaudio_schedule``). At t = T the input is
  pure noise and v = -x0: the model learns the data mean it has to start from.
* **Trailing timestep spacing** (Lin et al. §3.3): the sampler's first step is the last train step t = T
  (``grid_trailing``), so sampling starts from pure noise as training ended.
* **CFG with rescale** (Ho & Salimans 2022 arXiv 2207.12598; Lin et al. §3.4 eq. 15-16): v_cfg = v_u + w (v_c - v_u),
  v_resc = v_cfg std(v_c) / std(v_cfg), v = phi v_resc + (1 - phi) v_cfg, phi = 0.75; computed on the v output
  as EzAudio's inference does (``RescaledCFGDenoiser``), so it is finite at alpha_t = 0. Caption dropout 0.1.
* **Masked-latent training** (§3.3; ``EzAudioLoss``): with probability 0.25 a random set of spans covering a ratio
  r ~ U[0.25, 1] of the frames is masked; the network sees [x_t, clean frames where kept, mask flag] and the loss
  is on the masked frames only; otherwise every frame is masked (plain text-to-audio). One model then inpaints
  (``sample_ezaudio(known=..., known_mask=...)``): no extra model, no replacement trick.

Baselines for the inpainting claim: ``inpaint_replacement`` (the same model trained without masking, known frames
re-noised and pasted back after every step: Song et al. 2021 arXiv 2011.13456 App. I, RePaint without resampling,
Lugmayr et al. 2022 arXiv 2201.09865) and ``linear_fill`` (mel frames interpolated linearly across the gap).
Network: ``methods.ezaudio_net.EzAudioDiT`` (AdaLN-SOLA). Metrics: ``mel_peak_f0`` / ``gap_f0_cents`` / ``gap_mel_l1``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core import VPDiscrete
from ..core._tensor import per_sample
from ..core.denoiser import Denoiser
from ..core.grids import make_grid
from ..core.noise import prior_sample, randn, randn_like
from ..domains.audio.features import MelConfig
from ..domains.audio.text2audio import FRAMES, TIME_POOL, audio_tokenizer, frozen_text_encoder
from ..samplers import get_sampler
from ..samplers.baseline import ddim_step_coefficients
from ..samplers.registry import grid_steps
from ..training.losses import _per_example, sample_times
from .ezaudio_net import EzAudioDiT
from .guidance import rescale_guided_eps
from .text_conditioning import TextConditionedDenoiser, TextDiffusionLoss

__all__ = ["ezaudio_schedule", "grid_trailing", "span_mask", "middle_gap_mask", "EzAudioLoss", "RescaledCFGDenoiser",
           "train_ezaudio", "ezaudio_denoiser", "sample_ezaudio", "inpaint_replacement", "linear_fill", "mel_peak_f0",
           "frame_times", "gap_f0_cents", "gap_mel_l1", "N_MELS"]

N_MELS = 64


def ezaudio_schedule(num_train_timesteps: int = 1000) -> VPDiscrete:
    """EzAudio's schedule: scaled-linear betas (sqrt-linear from 0.00085 to 0.012, Stable Diffusion's) rescaled to
    zero terminal SNR (Lin et al. 2023, arXiv 2305.08891, Alg. 1): alpha(T) = 0, sigma(T) = 1."""
    return VPDiscrete.named("scaled_linear", num_train_timesteps, zero_terminal_snr=True, beta_start=0.00085,
                            beta_end=0.012)


def grid_trailing(schedule: VPDiscrete, steps: int) -> torch.Tensor:
    """Trailing spacing (Lin et al. 2023 §3.3, Tab. 2): integer steps round(arange(N, 0, -N/n)) - 1, so the first
    is N - 1 (t = 1, pure noise under zero terminal SNR), then t = 0; ``steps`` NFE."""
    return make_grid("trailing", schedule, steps)


def span_mask(batch: int, frames: int, generator=None, *, mask_prob: float = 0.25, ratio=(0.25, 1.0),
              span: int = 4) -> torch.Tensor:
    """EzAudio's training mask (B, frames) in {0, 1}, 1 = frame to generate (and to put the loss on).

    Per example: with probability ``mask_prob``, draw r ~ U[ratio] and mask random spans of ``span`` frames (start
    uniform, spans may overlap) until at least round(r * frames) frames are masked; otherwise mask everything (the
    plain text-to-audio task). Draws per example: one coin, r, then span starts (``generator``: one generator or a
    list of one per example)."""
    if not 0 <= mask_prob <= 1 or not 0 < ratio[0] <= ratio[1] <= 1 or span < 1:
        raise ValueError(f"need mask_prob in [0, 1], 0 < ratio_low <= ratio_high <= 1, span >= 1; got {mask_prob}, "
                         f"{ratio}, {span}")
    gens = generator if isinstance(generator, (list, tuple)) else [generator] * batch
    masks = torch.ones(batch, frames)
    for i, g in enumerate(gens):
        draws = torch.rand(2, generator=g, dtype=torch.float64)
        if float(draws[0]) >= mask_prob:
            continue
        need = max(1, round((ratio[0] + float(draws[1]) * (ratio[1] - ratio[0])) * frames))
        row = torch.zeros(frames)
        while int(row.sum()) < need:
            start = int(torch.randint(-span + 1, frames, (1,), generator=g))
            row[max(start, 0):start + span] = 1.0
        masks[i] = row
    return masks


def middle_gap_mask(batch: int, frames: int, start: int, end: int) -> torch.Tensor:
    """(B, frames) mask with frames [start, end) to generate (1) and the rest known (0)."""
    if not 0 <= start < end <= frames:
        raise ValueError(f"need 0 <= start < end <= {frames}; got [{start}, {end})")
    mask = torch.zeros(batch, frames)
    mask[:, start:end] = 1.0
    return mask


class EzAudioLoss(TextDiffusionLoss):
    """EzAudio's masked v-prediction loss (arXiv 2409.10819 §3.3) with caption dropout (a ``Trainer`` loss).

    Batch = ``(x0 (B, 64, F), tokens, token_mask)``. With t uniform over the 1000 train steps (t = T included:
    x_t = eps, v = -x0), eps ~ N(0, I), m = ``span_mask`` (1 = masked) and the caption dropped with probability 0.1:

        L_i = sum_{j, f} m_ij (v_theta(x_t, t, [x0 (1 - m)], m, tau(y'))_fj - v_fj)^2 / (64 sum_j m_ij),

    v = alpha_t eps - sigma_t x0. Kept frames carry zero loss weight. ``masked=False`` is the unmasked baseline
    (m = 1 everywhere, no clean frames: the plain text-to-audio loss). Draws: t, eps, mask, dropout coins.
    """

    def __init__(self, schedule, text_encoder, tokenizer, *, masked: bool = True, mask_prob: float = 0.25,
                 ratio=(0.25, 1.0), span: int = 4, caption_dropout: float = 0.1):
        super().__init__(schedule, text_encoder, tokenizer, "v", caption_dropout=caption_dropout)
        self.masked, self.mask_prob, self.ratio, self.span = bool(masked), float(mask_prob), tuple(ratio), int(span)
        span_mask(1, 8, mask_prob=self.mask_prob, ratio=self.ratio, span=self.span)  # validates the options

    def config(self) -> dict:
        return {**super().config(), "masked": self.masked, "mask_prob": self.mask_prob, "ratio": list(self.ratio),
                "span": self.span}

    def __call__(self, net: torch.nn.Module, batch, generator=None) -> torch.Tensor:
        if len(batch) != 3:
            raise ValueError("an EzAudio batch is (mel frames (B, 64, F), tokens, token_mask)")
        x0, tokens, token_mask = batch
        b, _, frames = x0.shape
        t = sample_times(self.schedule, b, generator).to(x0.device)
        eps = _per_example(generator, b, lambda n, g: randn((n,) + tuple(x0.shape[1:]), g, dtype=x0.dtype))
        x_t = self.schedule.add_noise(x0, t, eps.to(x0.device))
        cond = {}
        if self.masked:
            m = span_mask(b, frames, generator, mask_prob=self.mask_prob, ratio=self.ratio, span=self.span)
            m = m.to(x0)
            cond = {"known": x0 * (1 - m[:, None, :]), "known_mask": m}
        else:
            m = torch.ones(b, frames, dtype=x0.dtype, device=x0.device)
        tokens, token_mask = self.drop_captions(tokens, token_mask, generator)
        with torch.no_grad():
            context, _ = self.text_encoder.to(x0.device)(tokens, token_mask)
        out = self.denoiser(net).raw(x_t, t, context=context, context_mask=token_mask, **cond)
        alpha, sigma = per_sample(self.schedule.alpha(t), x0), per_sample(self.schedule.sigma(t), x0)
        v = (alpha * eps - sigma * x0).to(x0.dtype)
        sq = ((out - v) ** 2).mean(1)  # (B, F): mean over the mel bins
        return (sq * m).sum(1) / m.sum(1)

    def ezaudio_denoiser(self, net: torch.nn.Module) -> TextConditionedDenoiser:
        """The v-prediction ``TextConditionedDenoiser`` of ``net`` with this loss's tokenizer and text encoder."""
        return self.text_denoiser(net)


class RescaledCFGDenoiser(Denoiser):
    """Classifier-free guidance on the null caption with rescale, in v space (EzAudio's inference; Lin et al. 2023
    arXiv 2305.08891 eq. 15-16; Ho & Salimans 2022 arXiv 2207.12598 eq. 6):

        v_cfg = v_u + w (v_c - v_u),   v_resc = v_cfg * std(v_c) / std(v_cfg),   v = phi v_resc + (1 - phi) v_cfg,

    std over each sample's non-batch dimensions, v_c / v_u the model under the caption / the null caption (the
    other condition keys, e.g. the inpainting ``known`` frames, are shared), x0_hat = alpha x - sigma v. One batched
    network call of 2B per evaluation (B when w = 1). ``phi = 0`` is plain CFG; w = 1 the conditional model.
    """

    def __init__(self, denoiser: TextConditionedDenoiser, scale: float, rescale: float = 0.75):
        super().__init__(denoiser.schedule)
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"rescale (phi) must be in [0, 1]; got {rescale}")
        self.inner, self.scale, self.rescale = denoiser, float(scale), float(rescale)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        if self.scale == 1.0:
            return self.inner.denoise(x, t, **cond)
        null = self.inner.null_condition(cond)
        paired = {k: torch.cat([v, null[k] if k in null else v]) for k, v in cond.items()}
        v_c, v_u = self.inner.raw(torch.cat([x, x]), torch.cat([t, t]), **paired).chunk(2)
        v = v_u + self.scale * (v_c - v_u)
        if self.rescale > 0:
            v = rescale_guided_eps(v, v_c, self.rescale)
        alpha, sigma = per_sample(self.schedule.alpha(t), x), per_sample(self.schedule.sigma(t), x)
        return (alpha * x - sigma * v).to(x.dtype)


def train_ezaudio(images: torch.Tensor, captions: list[str], *, steps: int, masked: bool = True,
                  batch_size: int = 32, lr: float = 1e-3, seed: int = 0, net_options: dict | None = None,
                  mask_prob: float = 0.25, ema_decay: float | None = 0.999,
                  progress: bool = False) -> tuple[TextConditionedDenoiser, dict]:
    """Train a fresh ``EzAudioDiT`` on (mel frames (N, 64, F) in [-1, 1], captions) with ``EzAudioLoss``
    (``masked`` = EzAudio's masked-latent training; ``False`` = the unmasked baseline) on ``ezaudio_schedule()``
    with the library ``Trainer`` (AdamW ``lr``, warm-up min(50, steps), grad clip 1, EMA ``ema_decay`` of the
    weights, which is the returned net; None = the raw weights). Returns the v-prediction
    ``TextConditionedDenoiser`` and {"steps", "seconds", "parameters", "final_loss"}."""
    import time

    from ..training import TrainConfig, Trainer

    if images.ndim != 3 or images.shape[1] != N_MELS or len(captions) != images.shape[0]:
        raise ValueError(f"images must be (N, {N_MELS}, F) with one caption each; got {tuple(images.shape)} and "
                         f"{len(captions)} captions")
    tokenizer = audio_tokenizer()
    encoder = frozen_text_encoder(tokenizer, seed=seed)
    tokens, token_mask = tokenizer.encode(list(captions), max_len=encoder.max_len)
    loss = EzAudioLoss(ezaudio_schedule(), encoder, tokenizer, masked=masked, mask_prob=mask_prob)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = EzAudioDiT(N_MELS, images.shape[2], context_dim=encoder.width, **(net_options or {}))
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, steps), ema_decay=ema_decay,
                      seed=seed, progress=progress, log_every=max(1, min(100, steps)))
    t0 = time.perf_counter()
    trainer = Trainer(net, loss, (images.float(), tokens, token_mask), cfg)
    history = trainer.fit()
    trained = (trainer.ema_model if ema_decay is not None else net).eval()
    tail = list(history.get("loss", []))[-10:]
    info = {"steps": int(steps), "seconds": time.perf_counter() - t0,
            "parameters": sum(p.numel() for p in trained.parameters()),
            "final_loss": float(sum(tail) / len(tail)) if tail else None}
    return loss.ezaudio_denoiser(trained), info


def ezaudio_denoiser(net: EzAudioDiT, *, seed: int = 0) -> TextConditionedDenoiser:
    """A trained ``EzAudioDiT`` as the v-prediction ``TextConditionedDenoiser`` on ``ezaudio_schedule()``, with the
    tokenizer and the frozen caption encoder ``train_ezaudio(seed=seed)`` used (rebuilt from the seed)."""
    tokenizer = audio_tokenizer()
    encoder = frozen_text_encoder(tokenizer, seed=seed)
    return EzAudioLoss(ezaudio_schedule(), encoder, tokenizer).ezaudio_denoiser(net.eval())


def _paste(x: torch.Tensor, known: torch.Tensor | None, known_mask: torch.Tensor | None) -> torch.Tensor:
    if known is None:
        return x
    m = known_mask.to(x)[:, None, :]
    return x * m + known.to(x) * (1 - m)


@torch.no_grad()
def sample_ezaudio(denoiser: TextConditionedDenoiser, captions: list[str], *, known: torch.Tensor | None = None,
                   known_mask: torch.Tensor | None = None, steps: int = 25, guidance: float = 3.0,
                   rescale: float = 0.75, eta: float = 0.0, seed: int = 0, callback=None) -> torch.Tensor:
    """(N, 64, F) mel frames for ``captions``: DDIM(eta) (Song et al. 2021, arXiv 2010.02502) on the trailing grid
    from t = T (``steps`` NFE) on ``RescaledCFGDenoiser(w=guidance, phi=rescale)``, clipped to [-1, 1].

    Inpainting/editing: ``known`` (N, 64, F) with ``known_mask`` (N, F) (1 = generate) goes to the network as the
    masked-clean input at every step, and the known frames are copied into the result exactly. Prior noise from
    ``seed`` (one draw for the batch); ``callback`` is the sampler's (called once per step)."""
    if not captions:
        raise ValueError("captions must be a non-empty list of strings")
    frames = denoiser.net.config["frames"]
    cond = denoiser.condition(list(captions))
    if known is not None:
        cond = {**cond, "known": known.float(), "known_mask": known_mask.float()}
    generator = torch.Generator().manual_seed(seed)
    x_T = prior_sample(denoiser.schedule, (len(captions), N_MELS, frames), generator)
    guided = RescaledCFGDenoiser(denoiser, guidance, rescale)
    x = get_sampler("ddim").fn(guided, x_T, grid_trailing(denoiser.schedule, steps), cond=cond, eta=eta,
                               generator=generator, callback=callback)
    return _paste(x.clamp(-1, 1), known, known_mask)


@torch.no_grad()
def inpaint_replacement(denoiser: TextConditionedDenoiser, captions: list[str], known: torch.Tensor,
                        known_mask: torch.Tensor, *, steps: int = 25, guidance: float = 3.0, rescale: float = 0.75,
                        eta: float = 0.0, seed: int = 0) -> torch.Tensor:
    """The replacement baseline with a model trained without masking (Song et al. 2021, arXiv 2011.13456 App. I;
    RePaint without resampling, Lugmayr et al. 2022, arXiv 2201.09865): after each DDIM step s -> t the known frames
    of x_t are replaced by alpha_t x_known + sigma_t z (fresh noise, z ~ N(0, I)); the known frames are pasted into
    the result. Same grid, guidance and NFE as ``sample_ezaudio``."""
    frames = denoiser.net.config["frames"]
    cond = denoiser.condition(list(captions))
    generator = torch.Generator().manual_seed(seed)
    x = prior_sample(denoiser.schedule, (len(captions), N_MELS, frames), generator)
    guided = RescaledCFGDenoiser(denoiser, guidance, rescale)
    m = known_mask.float()[:, None, :]
    ts = grid_trailing(denoiser.schedule, steps)
    for _, s, t in grid_steps(guided, x, ts):
        x0 = guided(x, s, **cond)
        a_s, s_s, a_t, b, c = ddim_step_coefficients(denoiser.schedule, s, t, eta)
        x = a_t * x0 + b * (x - a_s * x0) / s_s
        if c > 0:
            x = x + c * randn_like(x, generator)
        x = x.float()
        noisy_known = a_t * known + torch.sqrt(1 - a_t**2) * randn_like(known, generator)
        x = x * m + noisy_known.float() * (1 - m)
    return _paste(x.clamp(-1, 1), known, known_mask)


def linear_fill(known: torch.Tensor, known_mask: torch.Tensor) -> torch.Tensor:
    """The interpolation baseline: each masked run of frames is filled by linear interpolation between the last
    known frame before it and the first after it (constant extension at the clip's ends). (N, 64, F) -> same."""
    out = known.clone().float()
    for i in range(known.shape[0]):
        kept = np.flatnonzero(known_mask[i].numpy() < 0.5)
        if kept.size == 0:
            raise ValueError("linear_fill needs at least one known frame per clip")
        grid = np.arange(known.shape[2])
        for band in range(known.shape[1]):
            out[i, band] = torch.from_numpy(np.interp(grid, kept, known[i, band].numpy()[kept]).astype(np.float32))
    return out


def _mel_band_hz() -> np.ndarray:
    import librosa

    config = MelConfig()
    return librosa.mel_frequencies(config.n_mels + 2, fmin=config.fmin, fmax=config.fmax)[1:-1]


def mel_peak_f0(image, *, f_low: float = 100.0, f_high: float = 1500.0) -> np.ndarray:
    """Per-frame f0 estimate (F,) in Hz of a (64, F) mel image: the strongest mel band between ``f_low`` and
    ``f_high`` refined by a parabola through it and its neighbours (in band index), mapped to Hz through the
    (Slaney) band centres. Our tones and chirps have harmonics of amplitude 1/k, so the strongest band is the
    fundamental's."""
    img = np.asarray(image, dtype=np.float64)
    centres = _mel_band_hz()
    lo, hi = int(np.searchsorted(centres, f_low)), int(np.searchsorted(centres, f_high))
    sub = img[lo:hi]
    k = sub.argmax(0)
    left, right = sub[np.maximum(k - 1, 0), np.arange(sub.shape[1])], sub[np.minimum(k + 1, hi - lo - 1),
                                                                           np.arange(sub.shape[1])]
    mid = sub[k, np.arange(sub.shape[1])]
    denom = left - 2 * mid + right
    offset = np.where(np.abs(denom) > 1e-9, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0.0)
    index = lo + k + np.clip(offset, -0.5, 0.5)
    return np.interp(index, np.arange(centres.size), centres)


def frame_times(frames: int = FRAMES) -> np.ndarray:
    """Centre time (s) of each compact mel frame: frame j averages STFT frames 6j..6j+5 at 10 ms each."""
    return (np.arange(frames) * TIME_POOL + (TIME_POOL - 1) / 2) * 0.01


def gap_f0_cents(image, event, start: int, end: int) -> float:
    """Mean over gap frames [start, end) of |1200 log2(f0_hat / f0_true)| (cents; 100 = one semitone), f0_hat from
    ``mel_peak_f0``, f0_true from the event's exact contour ``event.f0_at`` at the frame centres."""
    f0_hat = mel_peak_f0(image)[start:end]
    f0_true = event.f0_at(frame_times(np.asarray(image).shape[1]))[start:end]
    keep = np.isfinite(f0_true)
    if not keep.any():
        raise ValueError("the event is not pitched (or not sounding) inside the gap")
    return float(np.mean(np.abs(1200 * np.log2(f0_hat[keep] / f0_true[keep]))))


def gap_mel_l1(image, reference, start: int, end: int) -> float:
    """Mean |image - reference| over the gap frames [start, end) (mel image units, range [-1, 1])."""
    a, b = np.asarray(image, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.abs(a[:, start:end] - b[:, start:end]).mean())
