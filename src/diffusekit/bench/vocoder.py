"""A small trained vocoder against Griffin-Lim on held-out speech and event clips (issue 16).

Vocoder (``domains.audio.vocoder.VocosVocoder``): Vocos-style (Siuzdak 2023, arXiv 2306.00814) ConvNeXt trunk at
the mel frame rate, a log-magnitude head that corrects the mel pseudo-inverse and APNet's phase head (Ai & Ling
2023, arXiv 2305.07952), trained without a discriminator on spectral-convergence + log-magnitude L1 and APNet's
anti-wrapped phase losses; at inference the predicted phase is used directly ("network phase", as Vocos / APNet) or
as the start of 32 fast Griffin-Lim iterations on the predicted magnitude ("+GL32", the shipped setting).
Baselines: librosa Griffin-Lim (NNLS mel inverse, random initial phase, momentum 0.99) at 32 and 64 iterations,
and the untrained vocoder (pseudo-inverse magnitude, 32 Griffin-Lim iterations from its random phase head).

Data: training segments (32 frames) from the corpus utterances whose text is not held out by
``split_by_text(0.1, seed 0)`` and 64 procedural event clips (seed 5); evaluation on the held-out utterances (texts
never seen) and 8 unseen event clips (seed 6). Metrics (``domains.audio.features``): spectral convergence and
log-spectral distance of the output's STFT against the recording's, the pYIN f0 error in cents on frames voiced in
both (``methods.prodiff.f0_cents_error``) and the voicing error, and seconds of vocoding per second of audio
(one thread). The shipping criterion (``vocoder.SHIP_CRITERION``, fixed before measuring): beat Griffin-Lim@64 on
held-out speech by >= 1 dB LSD, >= 10 % SC and >= 10 % f0 error, all three.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..domains.audio.events import make_clips
from ..domains.audio.features import log_spectral_distance, mel_image, spectral_convergence
from ..domains.audio.speech import load_speech_corpus
from ..domains.audio.tts import split_by_text
from ..domains.audio.vocoder import (SHIP_CRITERION, GriffinLimVocoder, VocosVocoder, meets_ship_criterion,
                                     train_vocoder, vocode, vocoder_segments)
from ..domains.audio.wavio import wav_bytes
from ..methods.prodiff import f0_cents_error
from . import bench_progress, register_bench

BUDGETS = {True: {"steps": 150, "channels": 48, "layers": 2, "event_clips": 8, "train_stride": 32,
                  "test_utterances": 4, "test_events": 2},
           False: {"steps": 1500, "channels": 96, "layers": 4, "event_clips": 64, "train_stride": 16,
                   "test_utterances": None, "test_events": 8}}


class _Refined:
    """The trained vocoder with a fixed number of Griffin-Lim refinement iterations (0 = its own phase)."""

    def __init__(self, vocoder, iters: int):
        self.vocoder, self.iters = vocoder, iters

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        return self.vocoder(mel, refine_iters=self.iters)


def evaluate(vocoder, waves, *, f0: bool = True) -> dict:
    """Mean SC, LSD (dB), f0 cents (frames voiced in both), voicing error and seconds per audio second of
    ``vocoder`` re-synthesising each wave from its mel image; plus the waves it made."""
    sc, lsd, cents, voicing, seconds, audio, outputs = [], [], [], [], 0.0, 0.0, []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for wave in waves:
            mel = mel_image(wave)
            n = (mel.shape[1] - 1) * 160
            t0 = time.perf_counter()
            y = vocode(vocoder, mel, length=n)
            seconds += time.perf_counter() - t0
            audio += n / 16000
            sc.append(spectral_convergence(wave[:n], y))
            lsd.append(log_spectral_distance(wave[:n], y))
            if f0:
                r = f0_cents_error(y, wave[:n])
                if np.isfinite(r["cents"]):
                    cents.append(r["cents"])
                voicing.append(r["voicing_error"])
            outputs.append(y)
    finally:
        torch.set_num_threads(threads)
    return {"sc": float(np.mean(sc)), "lsd": float(np.mean(lsd)),
            "f0_cents": float(np.mean(cents)) if cents else float("nan"),
            "voicing_error": float(np.mean(voicing)) if voicing else float("nan"),
            "seconds_per_second": seconds / max(audio, 1e-9)}, outputs


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = BUDGETS[quick]
    corpus = load_speech_corpus()
    train_idx, test_idx = split_by_text(corpus.utterances, 0.1, seed=0)
    held_texts = {corpus.utterances[i].text for i in test_idx}
    train_waves = [u.wave for u in corpus.utterances if u.text not in held_texts]
    train_waves += [c.wave for c in make_clips(b["event_clips"], seed=5)]
    mel, wave = vocoder_segments(train_waves, stride=b["train_stride"])
    trained, info = train_vocoder(mel, wave, steps=b["steps"], channels=b["channels"], layers=b["layers"], seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same initialisation train_vocoder starts from
        untrained = VocosVocoder(mel.shape[1], b["channels"], b["layers"]).eval()
    test_idx = test_idx[:b["test_utterances"]] if b["test_utterances"] else test_idx
    speech = [corpus.utterances[i].wave for i in test_idx]
    events = [c.wave for c in make_clips(b["test_events"], seed=6)]
    vocoders = {"griffin-lim@32": GriffinLimVocoder(32), "griffin-lim@64": GriffinLimVocoder(64),
                "untrained (network phase)": _Refined(untrained, 0), "untrained+GL32": _Refined(untrained, 32),
                "vocoder (network phase)": _Refined(trained, 0),
                "vocoder+GL32": _Refined(trained, 32)}
    table, examples = {}, {}
    for name, v in bench_progress(list(vocoders.items()), desc="vocoder: evaluation"):
        row, outputs = evaluate(v, speech)
        ev, _ = evaluate(v, events, f0=False)  # most event kinds are unpitched; their f0 is not compared
        table[name] = {**row, "events": ev}
        examples[name] = outputs
    shipped = table["vocoder+GL32"]
    ships = meets_ship_criterion(shipped, table["griffin-lim@64"])
    ships_network_phase = meets_ship_criterion(table["vocoder (network phase)"], table["griffin-lim@64"])

    files = {}
    if not quick:
        for i in range(min(2, len(speech))):
            files[f"vocoder_{i}_reference.wav"] = wav_bytes(speech[i])
            for name, tag in (("griffin-lim@64", "gl64"), ("vocoder (network phase)", "network_phase"),
                              ("vocoder+GL32", "vocoder_gl32")):
                files[f"vocoder_{i}_{tag}.wav"] = wav_bytes(examples[name][i])

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    names = list(table)
    for ax, (metric, label) in zip(axes[:3], (("sc", "spectral convergence"), ("lsd", "log-spectral distance (dB)"),
                                              ("f0_cents", "f0 error (cents, voiced; speech only)"))):
        x = np.arange(len(names))
        ax.bar(x - 0.2, [table[n][metric] for n in names], 0.4, label="held-out speech")
        if metric != "f0_cents":
            ax.bar(x + 0.2, [table[n]["events"][metric] for n in names], 0.4, label="event clips")
        else:
            ax.set_yscale("log")
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    ref = mel_image(speech[0])
    strip = np.concatenate([ref, mel_image(examples["griffin-lim@64"][0]), mel_image(examples["vocoder+GL32"][0])],
                           axis=1)
    axes[3].imshow(strip, origin="lower", aspect="auto", cmap="magma", vmin=-1, vmax=1)
    axes[3].set_title("reference | Griffin-Lim@64 | vocoder+GL32 (mel of the output)", fontsize=8)
    axes[3].set_xticks([])
    fig.tight_layout()

    base = table["griffin-lim@64"]
    summary = (f"held-out speech ({len(speech)} utt.): SC / LSD / f0 cents: Griffin-Lim@64 {base['sc']:.3f} / "
               f"{base['lsd']:.2f} dB / {base['f0_cents']:.1f}; vocoder+GL32 {shipped['sc']:.3f} / "
               f"{shipped['lsd']:.2f} dB / {shipped['f0_cents']:.1f}; network phase "
               f"{table['vocoder (network phase)']['sc']:.3f} / {table['vocoder (network phase)']['lsd']:.2f} dB / "
               f"{table['vocoder (network phase)']['f0_cents']:.1f}; ships: {ships}")
    return {"summary": summary, "table": table, "ships": ships, "ships_network_phase": ships_network_phase,
            "criterion": SHIP_CRITERION, "train": {**info, "segments": int(mel.shape[0])},
            "budgets": b, "test_utterances": len(speech), "test_events": len(events), "files": files}, fig


register_bench("vocoder", "a small trained vocoder (Vocos / APNet heads) vs Griffin-Lim 32 / 64 on held-out speech: "
                          "SC, LSD, f0 cents, speed")(_run)
