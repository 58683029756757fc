"""Measuring EzAudio's claims at our scale (arXiv 2409.10819): inpainting the middle of held-out chirps and tones,
and the CFG-rescale ablation at high guidance. Shared by ``bench ezaudio`` and the ``events_ezaudio`` zoo recipe.

* ``inpainting_clips``: held-out pitched clips (``domains.audio.text2audio.pitched_clip``, a seed never trained
  on) whose event sounds through the whole gap: compact mel frames 12..19 (0.72-1.20 s, the middle 0.48 s of the
  2-s clip) lie inside every tone/chirp (onset <= 0.3 s, offset >= 1.3 s).
* ``evaluate_inpainting``: per method (masked-trained EzAudio, the unmasked model with replacement, linear
  interpolation of mel frames, and the real clip as the metric's floor) the gap's f0 error in cents against the
  events' true f0 contour (``gap_f0_cents``) and the gap's mel L1 against the real frames.
* ``evaluate_rescale``: text-to-audio at guidance w with rescale phi = 0 vs 0.75 (Lin et al. 2023, arXiv
  2305.08891 §3.4): the fraction of mel values the sampler pushed outside [-1, 1] before clipping (the
  over-saturation rescale targets), the gap between generated and real per-image mel mean / std, and the
  event kind read by the Auffusion bench's mel classifier (caption accuracy).
"""

from __future__ import annotations

import numpy as np
import torch

from ..domains.audio.text2audio import compact_mel_image, pitched_clip, pitched_clips
from .ezaudio import (gap_f0_cents, gap_mel_l1, inpaint_replacement, linear_fill, middle_gap_mask, sample_ezaudio)

__all__ = ["GAP", "training_data", "inpainting_clips", "evaluate_inpainting", "evaluate_rescale"]

GAP = (12, 20)
_KINDS = ("chirp_up", "chirp_down", "tone")


def training_data(count: int, *, seed: int = 0) -> tuple[torch.Tensor, list[str], list]:
    """``pitched_clips(count, seed)`` as mel frames (count, 64, 32) with their captions and events."""
    images, captions, events = pitched_clips(count, seed=seed)
    return images[:, 0], captions, events


def inpainting_clips(count: int, *, seed: int = 1) -> tuple[torch.Tensor, list[str], list]:
    """``count`` held-out clips cycling rising chirp, falling chirp, tone: (mel frames, captions, events)."""
    frames, captions, events = [], [], []
    for i in range(count):
        wave, caption, event = pitched_clip(seed, i, kind=_KINDS[i % len(_KINDS)])
        frames.append(compact_mel_image(wave))
        captions.append(caption)
        events.append(event)
    return torch.from_numpy(np.stack(frames)), captions, events


def _scores(filled: torch.Tensor, real: torch.Tensor, events: list, gap=GAP) -> dict:
    cents = np.array([gap_f0_cents(filled[i].numpy(), events[i], *gap) for i in range(len(events))])
    l1 = np.array([gap_mel_l1(filled[i].numpy(), real[i].numpy(), *gap) for i in range(len(events))])
    chirp = np.array([e.kind != "tone" for e in events])
    return {"f0_cents": float(cents.mean()), "f0_cents_chirps": float(cents[chirp].mean()) if chirp.any() else None,
            "f0_cents_tones": float(cents[~chirp].mean()) if (~chirp).any() else None, "mel_l1": float(l1.mean())}


def evaluate_inpainting(masked, baseline, real: torch.Tensor, captions: list[str], events: list, *, steps: int = 25,
                        guidance: float = 3.0, rescale: float = 0.75, seed: int = 0) -> tuple[dict, dict]:
    """({method: scores}, {method: filled frames}) for the middle gap ``GAP`` of ``real`` (N, 64, 32).

    Methods: ``ezaudio_masked`` (``sample_ezaudio`` with the known frames as input), ``ezaudio_no_context`` (the
    same model and noise with every frame masked: text-to-audio from the caption alone, scored on the gap),
    ``replacement_unmasked``
    (``inpaint_replacement`` with ``baseline``, the unmasked model; skipped when None), ``linear`` and ``real`` (the
    metric on the true frames: its floor). Same steps, guidance, rescale and seed for both models."""
    km = middle_gap_mask(len(captions), real.shape[2], *GAP)
    fills = {"ezaudio_masked": sample_ezaudio(masked, captions, known=real, known_mask=km, steps=steps,
                                              guidance=guidance, rescale=rescale, seed=seed)}
    unknown = torch.ones_like(km)
    fills["ezaudio_no_context"] = sample_ezaudio(masked, captions, known=real, known_mask=unknown, steps=steps,
                                                 guidance=guidance, rescale=rescale, seed=seed)
    if baseline is not None:
        fills["replacement_unmasked"] = inpaint_replacement(baseline, captions, real, km, steps=steps,
                                                            guidance=guidance, rescale=rescale, seed=seed)
    fills["linear"] = linear_fill(real, km)
    fills["real"] = real.float()
    return {name: _scores(f, real, events) for name, f in fills.items()}, fills


@torch.no_grad()
def evaluate_rescale(denoiser, real: torch.Tensor, captions: list[str], kinds: list[str], classifier, *,
                     guidance: float = 5.0, rescales=(0.0, 0.75), steps: int = 25, seed: int = 0) -> dict:
    """{f"phi_{phi}": {"saturated", "mean_gap", "std_gap", "kind_accuracy"}} for text-to-audio at ``guidance``.

    saturated: share of generated mel values outside [-1, 1] before clipping; mean_gap / std_gap: |mean over clips
    of the per-image mel mean (std) - the real clips' one|; kind_accuracy: share of clips whose kind
    ``classifier.predict`` (a ``methods.auffusion.MelKindClassifier`` fit on real clips) reads as captioned."""
    from ..core.noise import prior_sample
    from ..samplers import get_sampler
    from .ezaudio import N_MELS, RescaledCFGDenoiser, grid_trailing

    out = {}
    real_mean, real_std = float(real.mean((1, 2)).mean()), float(real.std((1, 2)).mean())
    cond = denoiser.condition(list(captions))
    for phi in rescales:
        g = torch.Generator().manual_seed(seed)
        x_T = prior_sample(denoiser.schedule, (len(captions), N_MELS, real.shape[2]), g)
        x = get_sampler("ddim").fn(RescaledCFGDenoiser(denoiser, guidance, phi), x_T,
                                   grid_trailing(denoiser.schedule, steps), cond=cond)
        saturated = float((x.abs() > 1).double().mean())
        x = x.clamp(-1, 1)
        predicted = classifier.predict(x[:, None])
        out[f"phi_{phi:g}"] = {"saturated": saturated,
                               "mean_gap": abs(float(x.mean((1, 2)).mean()) - real_mean),
                               "std_gap": abs(float(x.std((1, 2)).mean()) - real_std),
                               "kind_accuracy": float(np.mean([p == k for p, k in zip(predicted, kinds)]))}
    return out
