"""Shared pieces of the text-to-audio papers (Auffusion, arXiv 2401.01044; Make-An-Audio 2, arXiv 2305.18474).

* **Compact mel images.** A 2-s clip's 64-mel image (``features.mel_image``, 100 frames/s) is averaged over
  ``TIME_POOL`` = 6 frames, keeping the first 192: a (64, 32) image, one column per 60 ms. On the shared 2-core CPU a
  64 x 192 UNet step costs seconds; the pooled image keeps every mel band and what is measured (pitch, sweep
  direction, event kind, which event comes first). ``image_to_wave`` undoes the pooling by linear interpolation in
  time and vocodes with Griffin-Lim (``features.griffin_lim``, 32 iterations by default).
* **Captions that carry what is measured.** ``pitched_clip`` draws one event (tone / rising chirp / falling chirp /
  noise burst) whose caption names the requested pitch of tones from ``TONE_PITCHES_HZ``: "a steady tone at 300
  hz", "a rising chirp", "a falling chirp", "a burst of noise". The f0 error is measured against that number.
* **Tokenizer and frozen text encoders.** ``audio_tokenizer()`` is ``nets.text.CaptionTokenizer`` over every word
  our captions use (plain, pitched, unordered and structured captions; the structured caption's ``<``, ``&``,
  ``>``, ``@`` are dropped by the tokenizer, its place words start / mid / end / all stay). ``frozen_text_encoder``
  is a seeded, never-trained ``nets.text.TextEncoder``: the papers use frozen pretrained encoders (CLIP-L / FLAN-T5
  in Auffusion, CLAP and T5 in Make-An-Audio 2); we have no pretrained audio-caption encoder, so ours is frozen at
  its random initialisation (distinct tokens and positions still give distinct hidden states, the denoiser learns
  to read them through its own cross-attention / projection layers).
* ``train_net``: the library ``Trainer`` on in-memory tensors (AdamW, warm-up, no EMA), the budget in steps.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ...nets.text import CaptionTokenizer, TextEncoder
from .events import EVENT_KINDS, SoundEvent, make_clip, random_event, synthesize_event
from .features import SAMPLE_RATE, griffin_lim, mel_image

__all__ = ["TIME_POOL", "FRAMES", "FRAME_SECONDS", "CLIP_SECONDS", "TONE_PITCHES_HZ", "PITCHED_KINDS",
           "compact_mel_image", "image_to_wave", "pitched_caption", "pitched_clip", "pitched_clips",
           "unordered_caption", "audio_vocabulary", "audio_tokenizer", "frozen_text_encoder", "train_net",
           "real_time_factor", "example_files", "held_out_eps_mse"]

TIME_POOL = 6
FRAMES = 32
FRAME_SECONDS = TIME_POOL * 0.01
CLIP_SECONDS = 2.0
TONE_PITCHES_HZ = (200, 300, 450, 675)
PITCHED_KINDS = ("tone", "chirp_up", "chirp_down", "noise_burst")
_PITCHED_CAPTION = {"chirp_up": "a rising chirp", "chirp_down": "a falling chirp", "noise_burst": "a burst of noise"}
_PLAIN = {"tone": "a steady tone", "chirp_up": "a rising chirp", "chirp_down": "a falling chirp",
          "noise_burst": "a burst of noise", "clicks": "a train of clicks", "melody": "a short melody"}


def compact_mel_image(wave, frames: int = FRAMES) -> np.ndarray:
    """(64, frames) image in [-1, 1]: ``mel_image(wave)`` averaged over ``TIME_POOL`` consecutive frames (the first
    ``frames * TIME_POOL`` frames; shorter clips are padded with silence = -1)."""
    image = mel_image(wave)
    need = frames * TIME_POOL
    if image.shape[1] < need:
        image = np.pad(image, ((0, 0), (0, need - image.shape[1])), constant_values=-1.0)
    return image[:, :need].reshape(image.shape[0], frames, TIME_POOL).mean(-1).astype(np.float32)


def image_to_wave(image, *, n_iter: int = 32, seed: int = 0) -> np.ndarray:
    """Vocode a compact (64, F) mel image: linear interpolation back to 100 frames/s (F * TIME_POOL + 1 frames,
    the centred STFT's count for F * TIME_POOL * hop samples), then ``griffin_lim(scaled=True)``."""
    img = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if img.ndim != 2:
        raise ValueError(f"a mel image is (n_mels, frames); got shape {tuple(img.shape)}")
    frames = img.shape[1] * TIME_POOL
    full = torch.nn.functional.interpolate(img[None], size=frames + 1, mode="linear", align_corners=False)[0]
    return griffin_lim(full.numpy(), n_iter=n_iter, scaled=True, length=frames * 160, seed=seed)


def pitched_caption(kind: str, f0: float | None = None) -> str:
    """The Auffusion-experiment caption: "a steady tone at 300 hz" (``f0`` from ``TONE_PITCHES_HZ``), "a rising
    chirp", "a falling chirp", "a burst of noise"."""
    if kind == "tone":
        if f0 is None:
            raise ValueError("a tone caption needs its pitch f0")
        return f"a steady tone at {int(round(f0))} hz"
    if kind not in _PITCHED_CAPTION:
        raise ValueError(f"kind must be one of {', '.join(PITCHED_KINDS)}; got {kind!r}")
    return _PITCHED_CAPTION[kind]


def pitched_clip(seed: int, index: int, kind: str | None = None) -> tuple[np.ndarray, str, SoundEvent]:
    """One 2-s clip of a single event for the Auffusion experiment: (wave float32, caption, event).

    The kind is drawn from ``PITCHED_KINDS`` (or fixed by ``kind``); tones take a pitch from ``TONE_PITCHES_HZ``
    and 1-3 harmonics, chirps sweep an octave or more (exponentially) between 150 and 1050 Hz, noise bursts are
    band-limited; onset 0.1-0.3 s, length 1.2-1.5 s. Depends only on (seed, index).
    """
    rng = np.random.default_rng([int(seed), int(index), 16])
    kind = PITCHED_KINDS[int(rng.integers(len(PITCHED_KINDS)))] if kind is None else kind
    onset = round(float(rng.uniform(0.1, 0.3)), 2)
    offset = onset + round(float(rng.uniform(1.2, 1.5)), 2)
    if kind not in PITCHED_KINDS:
        raise ValueError(f"kind must be one of {', '.join(PITCHED_KINDS)}; got {kind!r}")
    event = random_event(kind, onset, offset, rng, tone_pitches=TONE_PITCHES_HZ)
    params = event.params
    wave = np.zeros(int(CLIP_SECONDS * SAMPLE_RATE))
    samples = synthesize_event(event, SAMPLE_RATE, rng)
    start = int(round(onset * SAMPLE_RATE))
    wave[start:start + samples.size] = samples[: wave.size - start]
    return wave.astype(np.float32), pitched_caption(kind, params.get("f0")), event


def pitched_clips(count: int, *, seed: int = 0) -> tuple[torch.Tensor, list[str], list[SoundEvent]]:
    """``count`` clips of ``pitched_clip``: (images (count, 1, 64, FRAMES), captions, events)."""
    images, captions, events = [], [], []
    for i in range(count):
        wave, caption, event = pitched_clip(seed, i)
        images.append(compact_mel_image(wave))
        captions.append(caption)
        events.append(event)
    return torch.from_numpy(np.stack(images))[:, None], captions, events


def unordered_caption(events: list[SoundEvent]) -> str:
    """The Make-An-Audio 2 baseline's caption: the events named in a fixed (alphabetical) order joined by "and",
    so it says which events occur but not in which order ("a burst of noise and a rising chirp")."""
    return " and ".join(sorted(_PLAIN[e.kind] for e in events))


def audio_vocabulary() -> list[str]:
    """Every word of the plain, pitched, unordered and structured captions (sorted)."""
    words = set()
    for i in range(64):
        clip = make_clip(0, i)
        words |= set(clip.caption.split()) | set(clip.structured.replace("<", " ").replace(">", " ")
                                                   .replace("&", " ").replace("@", " ").split())
    for text in list(_PLAIN.values()) + list(_PITCHED_CAPTION.values()):
        words |= set(text.split())
    words |= {"then", "and", "at", "hz", "low", "mid", "high", "start", "end", "all", "steady", "tone"}
    words |= {str(int(f)) for f in TONE_PITCHES_HZ}
    words |= {w for k in EVENT_KINDS for w in k.split("_")}
    return sorted(words)


def audio_tokenizer() -> CaptionTokenizer:
    """Word-level ``CaptionTokenizer`` over ``audio_vocabulary()``."""
    return CaptionTokenizer(audio_vocabulary())


def frozen_text_encoder(tokenizer: CaptionTokenizer, *, width: int = 64, depth: int = 2, seed: int = 0,
                        max_len: int = 24) -> TextEncoder:
    """A ``TextEncoder`` initialised from ``seed`` (its own RNG stream; the global one is restored) and frozen
    (eval mode, no gradients): the stand-in for the papers' frozen pretrained text encoders."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = TextEncoder(tokenizer.vocab_size, width=width, depth=depth, num_heads=4, max_len=max_len)
    return encoder.eval().requires_grad_(False)


def train_net(net: torch.nn.Module, loss_fn, data: tuple[torch.Tensor, ...], *, steps: int, batch_size: int = 32,
              lr: float = 2e-3, seed: int = 0, progress: bool = False) -> dict:
    """Train ``net`` in place with the library ``Trainer`` (AdamW ``lr``, linear warm-up over min(50, steps), grad
    clip 1, no EMA) for ``steps`` steps on the in-memory ``data``; returns {"steps", "seconds"}."""
    from ...training import TrainConfig, Trainer

    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, steps), ema_decay=None,
                      seed=seed, progress=progress, log_every=10 ** 9)
    t0 = time.perf_counter()
    Trainer(net, loss_fn, data, cfg).fit()
    net.eval()
    return {"steps": int(steps), "seconds": time.perf_counter() - t0}


def real_time_factor(seconds: float, clips: int, clip_seconds: float = FRAMES * FRAME_SECONDS) -> float:
    """Wall seconds of generation per second of audio generated (RTF < 1: faster than real time)."""
    return float(seconds) / max(clips * clip_seconds, 1e-12)


def example_files(name: str, images, waves, captions: list[str]) -> dict[str, bytes]:
    """{"NAME_i.wav": 16-bit PCM at 16 kHz, "NAME_mels.png": the mel images titled by their captions} as bytes, for
    a bench's optional ``files`` (``bench.run_bench`` writes them next to its JSON)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.io import wavfile

    files = {}
    for i, wave in enumerate(waves):
        buf = io.BytesIO()
        wavfile.write(buf, SAMPLE_RATE, (np.clip(wave, -1, 1) * 32767).astype(np.int16))
        files[f"{name}_{i}.wav"] = buf.getvalue()
    n = len(captions)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6), squeeze=False)
    for ax, img, caption in zip(axes[0], images, captions):
        ax.imshow(np.asarray(img).reshape(64, -1), origin="lower", aspect="auto", cmap="magma", vmin=-1, vmax=1)
        ax.set_title(caption, fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    files[f"{name}_mels.png"] = buf.getvalue()
    return files


@torch.no_grad()
def held_out_eps_mse(denoiser, x0: torch.Tensor, cond: dict, *, times=(0.1, 0.3, 0.5, 0.7, 0.9),
                     seed: int = 0) -> float:
    """Mean over ``times`` and examples of ||eps_hat(x_t, t, cond) - eps||^2 / dim with x_t = alpha_t x0 + sigma_t eps
    (eps from ``seed``, the same for every call): the denoising loss on held-out data under a given condition.
    Comparing it under the true captions and under wrong ones (shuffled, or the events' order swapped) measures how
    much the model uses the text, without sampling."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for t_value in times:
        eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        t = torch.full((x0.shape[0],), float(t_value), dtype=torch.float64)
        x_t = denoiser.schedule.add_noise(x0, t, eps)
        total += float((denoiser.eps(x_t, t, **cond) - eps).pow(2).mean())
    return total / len(times)
