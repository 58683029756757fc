"""Auffusion (Xue et al. 2024, arXiv 2401.01044) at CPU scale: text-to-audio as mel-image diffusion with CFG.

Data: 2-s single-event clips (``text2audio.pitched_clip``: tones at 200 / 300 / 450 / 675 Hz captioned "a steady
tone at 300 hz", rising and falling chirps, noise bursts) as (64 mels x 32 frames of 60 ms) images in [-1, 1].
Model: ``methods.auffusion``'s text-conditioned 2-D UNet (base 16, mults (1, 2, 2), cross-attention to a frozen
text encoder), eps prediction as in the paper (v is ``train_auffusion(prediction="v")``; at 1500 steps it gave a
better conditional model but a smaller CFG gain, see docs) on the linear VP schedule, caption dropout 0.1, AdamW
lr 2e-3, batch 16. One model is trained; the claim is measured on it with and without classifier-free guidance
(w = 1: the conditional model, the baseline; w = 3 (and 5 in the full run): CFG), DDIM 20 steps, Griffin-Lim 32
iterations.

Metrics on generated clips for fixed requests (every tone pitch, rising / falling chirps, noise bursts):
* ``tone_cents``: median |1200 log2(f0_hat / f0_requested)| of pYIN's median f0 over the voiced frames of each
  generated tone (unvoiced clips count 1200 cents); ``tone_within_semitone``: share of tones within 100 cents;
* ``sweep_accuracy``: share of generated chirps whose fitted log-f0 slope has the requested sign;
* ``kind_accuracy``: share of clips whose kind (tone / chirp up / chirp down / noise) a mel classifier trained on
  real clips (``MelKindClassifier``) recognises as requested;
* ``text_use``: the held-out denoising loss (``held_out_eps_mse``) under the true captions, shuffled captions
  and the null caption (lower with the true ones = the model reads the caption; visible long before samples are);
* ``rtf``: wall seconds (sampling + Griffin-Lim) per second of audio, on this machine's torch threads.
The ``real`` row applies the same measurements to held-out real clips after the same mel -> Griffin-Lim round trip
(the ceiling at this mel resolution and vocoder).
"""

from __future__ import annotations

import time

import numpy as np

from ..domains.audio.text2audio import (FRAME_SECONDS, FRAMES, TONE_PITCHES_HZ, example_files,
                                        held_out_eps_mse, image_to_wave, pitched_caption, pitched_clips,
                                        real_time_factor)
from ..methods.auffusion import MelKindClassifier, cents_error, f0_summary, generate_audio, train_auffusion
from . import bench_progress, register_bench

BUDGETS = {True: {"train_clips": 192, "steps": 0, "batch_size": 16, "repeats": 1, "guidance": (1.0, 3.0),
                  "sample_steps": 10, "prediction": "eps"},  # steps 0: evaluate the shipped zoo:events_auffusion
           False: {"train_clips": 1024, "steps": 1500, "batch_size": 16, "repeats": 2, "guidance": (1.0, 3.0, 5.0),
                   "sample_steps": 20, "prediction": "eps"}}


def requests(repeats: int) -> list[tuple[str, float | None]]:
    """(kind, f0) requests: every tone pitch, and as many rising chirps, falling chirps and noise bursts."""
    n = len(TONE_PITCHES_HZ)
    one = [("tone", float(f)) for f in TONE_PITCHES_HZ] + [("chirp_up", None)] * n + [("chirp_down", None)] * n \
        + [("noise_burst", None)] * n
    return one * repeats


def measure(waves, images, reqs, classifier: MelKindClassifier) -> dict:
    """Tone cents error, sweep-direction accuracy and kind accuracy of generated (or real) clips."""
    cents, sweeps = [], []
    for (kind, f0), wave in zip(reqs, waves):
        if kind == "tone":
            cents.append(cents_error(f0_summary(wave)["f0"], f0))
        elif kind in ("chirp_up", "chirp_down"):
            slope = f0_summary(wave)["slope"]
            sweeps.append(bool(np.isfinite(slope) and (slope > 0) == (kind == "chirp_up")))
    predicted = classifier.predict(images)
    return {"tone_cents": float(np.median(cents)), "tone_within_semitone": float(np.mean(np.asarray(cents) < 100)),
            "sweep_accuracy": float(np.mean(sweeps)),
            "kind_accuracy": float(np.mean([p == k for p, (k, _) in zip(predicted, reqs)]))}


def run_auffusion(quick: bool) -> tuple[dict, object]:
    """The bench; the full run also returns a few generated wavs and a spectrogram PNG per guidance (``files``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = BUDGETS[quick]
    images, captions, events = pitched_clips(b["train_clips"], seed=0)
    classifier = MelKindClassifier().fit(images, [e.kind for e in events])
    if b["steps"]:
        denoiser, info = train_auffusion(images, captions, steps=b["steps"], batch_size=b["batch_size"], seed=0,
                                         prediction=b["prediction"])
    else:  # the quick run measures the shipped model, trained by the full run's recipe (zoo.recipes_audio)
        from .. import zoo

        denoiser = zoo.load("events_auffusion")
        training = zoo.manifest("events_auffusion")["training"]
        info = {"steps": training["steps"], "source": "zoo:events_auffusion", "train_clips": training["train_clips"]}
    reqs = requests(b["repeats"])
    texts = [pitched_caption(k, f) for k, f in reqs]

    test_images, _, test_events = pitched_clips(len(reqs), seed=1)
    real_reqs = [(e.kind, e.params.get("f0")) for e in test_events]
    real_waves = [image_to_wave(img[0].numpy(), seed=i) for i, img in enumerate(test_images)]
    table = {"real": measure(real_waves, test_images, real_reqs, classifier)}
    test_captions = [pitched_caption(k, f) for k, f in real_reqs]
    shuffled = [test_captions[i] for i in np.random.default_rng(0).permutation(len(test_captions))]
    text_use = {"eps_mse_true_captions": held_out_eps_mse(denoiser, test_images, denoiser.condition(test_captions)),
                "eps_mse_shuffled_captions": held_out_eps_mse(denoiser, test_images, denoiser.condition(shuffled)),
                "eps_mse_null_caption": held_out_eps_mse(denoiser, test_images,
                                                         denoiser.null_condition(denoiser.condition(test_captions)))}
    shown, files = {}, {}
    for w in bench_progress(b["guidance"], desc="auffusion: guidance"):
        t0 = time.perf_counter()
        gen_images, waves = generate_audio(denoiser, texts, guidance=w, steps=b["sample_steps"], seed=0)
        seconds = time.perf_counter() - t0
        row = measure(waves, gen_images, reqs, classifier)
        row["rtf"] = real_time_factor(seconds, len(texts), FRAMES * FRAME_SECONDS)
        table[f"w={w:g}"] = row
        pick = list(range(0, len(TONE_PITCHES_HZ) * 4, 3))
        shown[w] = gen_images[pick]
        if not quick:
            files.update(example_files(f"auffusion_w{w:g}", gen_images[pick], [waves[i] for i in pick],
                                       [texts[i] for i in pick]))

    base, cfg = table["w=1"], table["w=3"]
    summary = (f"Auffusion (mel-image UNet + text cross-attention), {info['steps']} steps: kind acc "
               f"{base['kind_accuracy']:.2f} -> {cfg['kind_accuracy']:.2f} with CFG w=3, tone f0 error "
               f"{base['tone_cents']:.0f} -> {cfg['tone_cents']:.0f} cents, sweep direction "
               f"{base['sweep_accuracy']:.2f} -> {cfg['sweep_accuracy']:.2f} (real clips after Griffin-Lim: "
               f"{table['real']['tone_cents']:.0f} cents, sweep {table['real']['sweep_accuracy']:.2f}); "
               f"RTF {cfg['rtf']:.2f}")
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(4.2 * (len(shown) + 1), 3.4))
    for ax, (w, imgs) in zip(axes, shown.items()):
        strip = np.concatenate([np.asarray(i[0]) for i in imgs], axis=1)
        ax.imshow(strip, origin="lower", aspect="auto", cmap="magma", vmin=-1, vmax=1)
        ax.set_title(f"generated mels, w={w:g}\n" + ", ".join(texts[i].replace("a steady tone at ", "")
                                                                 for i in range(0, len(TONE_PITCHES_HZ) * 4, 3)),
                     fontsize=6)
        ax.set_yticks([])
        ax.set_xticks([])
    names = list(table)
    metrics = ("kind_accuracy", "sweep_accuracy", "tone_within_semitone")
    for j, metric in enumerate(metrics):
        axes[-1].bar(np.arange(len(names)) + 0.27 * (j - 1), [table[n][metric] for n in names], 0.27, label=metric)
    axes[-1].set_xticks(np.arange(len(names)), names)
    axes[-1].set_ylim(0, 1.05)
    axes[-1].legend(fontsize=6)
    fig.tight_layout()
    result = {"summary": summary, "table": table, "train": info, "budgets": {k: list(v) if isinstance(v, tuple) else v
                                                                             for k, v in b.items()},
              "requests": len(reqs), "text_use": text_use, "files": files}
    return result, fig


@register_bench("auffusion", "Auffusion text-to-audio mel-image diffusion: CFG vs none on f0 / sweep / kind")
def run(quick: bool) -> tuple[dict, object]:
    return run_auffusion(quick)
