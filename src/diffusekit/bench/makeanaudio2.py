"""Make-An-Audio 2 (Huang et al. 2023, arXiv 2305.18474) at CPU scale: structured captions for temporal order.

Data: 2-s clips of two events in sequence (``events.make_clip(num_events=2)``, kinds tone / rising chirp / noise
burst), as 32 compact mel frames (64 bands, 60 ms each). Model: ``methods.makeanaudio2``'s in-context DiT
(hidden 96, depth 3) over [time token, plain-caption tokens, structured-caption tokens, frame tokens] with two frozen
text encoders; v prediction, linear VP schedule, joint caption dropout 0.1, AdamW lr 2e-3, batch 16.

Two models, same architecture, data, seeds and steps; only the captions differ:
* ``structured``: the plain caption ("a rising chirp then a burst of noise") and the structured one
  ("<chirp up& start>@<noise burst& end>");
* ``unordered`` (baseline): ``text2audio.unordered_caption`` in both slots ("a burst of noise and a rising chirp",
  events in alphabetical order), which names the events but not their order.

Held-out denoising loss (``held_out_eps_mse``) with the captions of the true order and of the swapped order:
``order_gap`` = loss(swapped) - loss(true) > 0 means the model reads the order from the captions (identically 0
for the unordered arm, whose captions cannot express it); it shows long before samples do.

Metric: event-order accuracy on generated clips for held-out two-event requests: a frame-level event classifier
trained on real frames (``FrameEventClassifier``, 5-frame windows) gives per-frame class probabilities; the order is
correct when the requested first event's probability-weighted time centroid precedes the second's (chance 0.5; the
``real`` row is the same detector on the held-out real clips). Also reported: sampling steps (DDIM, CFG w = 3 and the
conditional model w = 1), the variable-length check (the same model asked for 24 frames = 1.44 s) and the
real-time factor (sampling + Griffin-Lim seconds per second of audio).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..domains.audio.events import make_clip, plain_caption, structured_caption
from ..domains.audio.text2audio import (FRAME_SECONDS, compact_mel_image, example_files,
                                        held_out_eps_mse, image_to_wave, real_time_factor, unordered_caption)
from ..methods.makeanaudio2 import FrameEventClassifier, event_order_correct, sample_mel_frames, train_makeanaudio2
from . import bench_progress, register_bench

ORDER_KINDS = ("tone", "chirp_up", "noise_burst")
BUDGETS = {True: {"train_clips": 256, "steps": 0, "batch_size": 16, "test_clips": 32, "guidance": (1.0, 3.0),
                  "sample_steps": 10},  # steps 0: evaluate the shipped zoo:events_makeanaudio2 (the full recipe)
           False: {"train_clips": 1024, "steps": 1500, "batch_size": 16, "test_clips": 96, "guidance": (1.0, 3.0),
                   "sample_steps": 20}}


def two_event_frames(count: int, seed: int):
    """(clips, frames (count, 64, 32)) of ``count`` two-event clips of ``ORDER_KINDS`` from stream ``seed``."""
    clips = [make_clip(seed, i, num_events=2, kinds=ORDER_KINDS) for i in range(count)]
    return clips, torch.from_numpy(np.stack([compact_mel_image(c.wave) for c in clips]))


def captions_for(clips, arm: str, swapped: bool = False) -> tuple[list[str], list[str]]:
    """(plain, structured) captions of ``clips`` for the arm "structured" or "unordered"; ``swapped``: as if the
    two events came in the other order."""
    events = [c.events[::-1] if swapped else c.events for c in clips]
    if arm == "structured":
        return [plain_caption(e) for e in events], [structured_caption(e) for e in events]
    bag = [unordered_caption(e) for e in events]
    return bag, bag


def run_makeanaudio2(quick: bool) -> tuple[dict, object]:
    """The bench; the full run also returns a few generated wavs and a spectrogram PNG per arm (``files``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = BUDGETS[quick]
    clips, frames = two_event_frames(b["train_clips"], seed=0)
    classifier = FrameEventClassifier().fit(frames, [c.events for c in clips])
    test_clips, test_frames = two_event_frames(b["test_clips"], seed=1)
    orders = [(c.events[0].kind, c.events[1].kind) for c in test_clips]
    table = {"real": {"order_accuracy": float(event_order_correct(classifier, test_frames, orders).mean())}}
    info, shown, files = {}, {}, {}
    for arm in bench_progress(("structured", "unordered"), desc="makeanaudio2: arms"):
        plain, structured = captions_for(clips, arm)
        if b["steps"]:
            denoiser, info[arm] = train_makeanaudio2(frames, plain, structured, steps=b["steps"],
                                                     batch_size=b["batch_size"], lr=2e-3, seed=0)
        else:  # a 200-step model shows no order effect yet, so --quick measures the shipped pair
            from .. import zoo

            denoiser = zoo.load("events_makeanaudio2")[arm]
            info[arm] = {"steps": zoo.manifest("events_makeanaudio2")["training"]["steps"],
                         "source": "zoo:events_makeanaudio2"}
        test_plain, test_structured = captions_for(test_clips, arm)
        true_mse = held_out_eps_mse(denoiser, test_frames, denoiser.condition(test_plain, test_structured))
        swapped_mse = held_out_eps_mse(denoiser, test_frames, denoiser.condition(*captions_for(test_clips, arm, True)))
        table[f"{arm} text_use"] = {"eps_mse_true_order": true_mse, "eps_mse_swapped_order": swapped_mse,
                                    "order_gap": swapped_mse - true_mse}
        for w in b["guidance"]:
            t0 = time.perf_counter()
            gen = sample_mel_frames(denoiser, test_plain, test_structured, guidance=w, steps=b["sample_steps"])
            sample_seconds = time.perf_counter() - t0
            row = {"order_accuracy": float(event_order_correct(classifier, gen, orders).mean())}
            if w == b["guidance"][-1]:
                t0 = time.perf_counter()
                waves = [image_to_wave(g.numpy(), seed=i) for i, g in enumerate(gen[:4])]
                vocode_seconds = (time.perf_counter() - t0) * len(gen) / 4
                row["rtf"] = real_time_factor(sample_seconds + vocode_seconds, len(gen), gen.shape[2] * FRAME_SECONDS)
                short = sample_mel_frames(denoiser, test_plain[:16], test_structured[:16], guidance=w,
                                          steps=b["sample_steps"], frames=24)
                row["order_accuracy_24_frames"] = float(event_order_correct(classifier, short, orders[:16]).mean())
                shown[arm] = gen[:6]
                if not quick:
                    files.update(example_files(f"makeanaudio2_{arm}", gen[:4], waves, test_plain[:4]))
            table[f"{arm} w={w:g}"] = row
    w = b["guidance"][-1]
    s, u = table[f"structured w={w:g}"], table[f"unordered w={w:g}"]
    summary = (f"Make-An-Audio 2 (in-context DiT, dual text encoders), {info['structured']['steps']} steps, "
               f"DDIM {b['sample_steps']} "
               f"CFG {w:g}: event-order accuracy {u['order_accuracy']:.2f} with unordered captions -> "
               f"{s['order_accuracy']:.2f} with plain + structured captions (real clips "
               f"{table['real']['order_accuracy']:.2f}, chance 0.5); 24-frame clips "
               f"{s['order_accuracy_24_frames']:.2f}; held-out loss gap swapped - true order "
               f"{table['structured text_use']['order_gap']:.4f} "
               f"(unordered {table['unordered text_use']['order_gap']:.4f}); "
               f"RTF {s['rtf']:.2f}")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, (arm, gen) in zip(axes, shown.items()):
        ax.imshow(np.concatenate([np.asarray(g) for g in gen], axis=1), origin="lower", aspect="auto", cmap="magma",
                  vmin=-1, vmax=1)
        ax.set_title(f"{arm}: " + " | ".join(f"{a}>{b_}" for a, b_ in orders[:6]), fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
    names = [n for n in table if "text_use" not in n]
    axes[2].bar(np.arange(len(names)), [table[n]["order_accuracy"] for n in names])
    axes[2].axhline(0.5, color="k", lw=0.8, ls="--")
    axes[2].set_xticks(np.arange(len(names)), names, rotation=20, fontsize=7)
    axes[2].set_ylabel("event-order accuracy")
    axes[2].set_ylim(0, 1.05)
    fig.tight_layout()
    result = {"summary": summary, "table": table, "train": info, "sample_steps": b["sample_steps"],
              "test_clips": b["test_clips"], "train_clips": b["train_clips"], "files": files}
    return result, fig


@register_bench("makeanaudio2", "Make-An-Audio 2 structured captions: event-order accuracy vs unordered captions")
def run(quick: bool) -> tuple[dict, object]:
    return run_makeanaudio2(quick)
