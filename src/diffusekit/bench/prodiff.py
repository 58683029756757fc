"""ProDiff (Huang et al. 2022, arXiv 2207.06389): a 4-step x0-parameterised diffusion TTS teacher on the espeak-ng
corpus, distilled to 2 and 1 steps with the two-teacher-DDIM-step target, against the teacher run at 2 and 1 steps
without distillation (and, in the full run, continuous-time twins with the x0 and with the eps parameterisation,
sampled by 4-step DDIM on the teacher's grid and by 50-step DDPM).

Data: ``load_speech_corpus()`` (240 utterances), split by text (10% of the distinct texts held out with all their
utterances, seed 0); 64-mel images in [-1, 1], phoneme durations converted to frames (``domains.audio.tts``). The
model (``methods.prodiff``): phoneme encoder (2 transformer blocks) + voice / rate / pitch embeddings + duration
predictor, WaveNet denoiser (full: 48 channels, 6 layers; quick: 32, 4), VP schedule with beta 0.1 -> 40 (ProDiff's),
teacher grid t = 1, 0.75, 0.5, 0.25, 0 (the same alphas as ProDiff's 4 discrete steps). Budgets (optimizer steps,
batch 16, 48-frame windows, AdamW, no EMA): teacher 1500 (quick 150) at lr 2e-3; each distillation round 600
(quick 60) at lr 5e-4; each continuous-time twin 1500 steps (full run only; t ~ U(t_min, 1), the eps twin trained
with L1 on eps as DiffSpeech).

Measured on the held-out utterances with ground-truth durations (so frames align with the reference): mel L1
([-1, 1] units), L1 to the teacher's 4-step mel from the same noise (what distillation targets), spectral detail
(mean |mel[k+1] - mel[k]| over mel bins) relative to the reference's, f0 error (pYIN on 32-iteration Griffin-Lim
output vs pYIN on the reference recording, frames voiced in both, cents) and the voicing-decision error; the
real-time factor of mel generation from text alone (predicted durations, batch 1, one thread); the duration
predictor's error. The full run also returns a few wav files (reference, teacher@4, student@2 from text).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from ..core import VPLinear
from ..domains.audio.features import MelConfig, f0_contour
from ..domains.audio.speech import PITCHES, RATES, VOICES, load_speech_corpus
from ..domains.audio.tts import PhonemeVocabulary, split_by_text, tts_tensors
from ..methods.prodiff import (ProDiffTTS, distill_student, f0_cents_error, mel_l1, real_time_factor, synthesize,
                               train_teacher, vocode)
from ..training import TrainConfig
from . import bench_progress, register_bench

TEACHER_GRID = (1.0, 0.75, 0.5, 0.25, 0.0)
FULL = {"hidden": 48, "channels": 48, "layers": 6, "teacher_steps": 1500, "distill_steps": 600, "ddpm_steps": 1500,
        "f0_utterances": None, "rtf_utterances": 8}
QUICK = {"hidden": 32, "channels": 32, "layers": 4, "teacher_steps": 150, "distill_steps": 60, "ddpm_steps": 0,
         "f0_utterances": 2, "rtf_utterances": 2}
BATCH, WINDOW, TEACHER_LR, DISTILL_LR = 16, 48, 2e-3, 5e-4


def _config(steps: int, lr: float, seed: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=BATCH, lr=lr, ema_decay=None, warmup_steps=min(50, steps // 10),
                       seed=seed, progress=False, log_every=max(1, steps // 10))


def spectral_detail(mel: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Per-utterance mean |mel[k + 1] - mel[k]| over adjacent mel bins and real frames (harmonic structure; a
    blurred, averaged spectrogram has less): mel (B, M, F) -> (B,)."""
    mask = (torch.arange(mel.shape[-1])[None, :] < frames[:, None]).to(mel.dtype)[:, None, :]
    d = (mel[:, 1:] - mel[:, :-1]).abs() * mask
    return d.flatten(1).sum(1) / (mask.flatten(1).sum(1) * (mel.shape[1] - 1))


def _wav_bytes(wave: np.ndarray, rate: int) -> bytes:
    from scipy.io import wavfile

    buf = io.BytesIO()
    wavfile.write(buf, rate, (np.clip(wave, -1, 1) * 32767).astype(np.int16))
    return buf.getvalue()


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = QUICK if quick else FULL
    corpus = load_speech_corpus()
    vocab = PhonemeVocabulary(corpus.phoneme_inventory())
    train_idx, test_idx = split_by_text(corpus.utterances, 0.1, seed=0)
    data = tts_tensors(corpus.utterances, vocab, voices=VOICES, rates=RATES, pitches=PITCHES)
    train, test = data.subset(train_idx), data.subset(test_idx)
    schedule = VPLinear(0.1, 40.0)
    ts4 = torch.tensor(TEACHER_GRID, dtype=torch.float64)

    def new_model(seed: int) -> ProDiffTTS:
        torch.manual_seed(seed)  # parameter init only; every data / noise draw below uses explicit generators
        return ProDiffTTS(len(vocab), (len(VOICES), len(RATES), len(PITCHES)), hidden=size["hidden"],
                          channels=size["channels"], layers=size["layers"])

    stages = bench_progress(total=5 if size["ddpm_steps"] else 3, desc="prodiff: training")
    teacher = new_model(0)
    train_teacher(teacher, schedule, ts4, train.data(), _config(size["teacher_steps"], TEACHER_LR, 0), window=WINDOW)
    stages.update()
    s2 = distill_student(teacher, schedule, ts4, train.data(), _config(size["distill_steps"], DISTILL_LR, 1),
                         window=WINDOW)
    stages.update()
    s1 = distill_student(s2.model, schedule, s2.ts, train.data(), _config(size["distill_steps"], DISTILL_LR, 2),
                         window=WINDOW)
    stages.update()
    runs = {"teacher@4": (teacher, ts4, "ddim", "x0"), "teacher@2": (teacher, ts4[::2], "ddim", "x0"),
            "teacher@1": (teacher, ts4[::4], "ddim", "x0"), "student@2": (s2.model, s2.ts, "ddim", "x0"),
            "student@1": (s1.model, s1.ts, "ddim", "x0")}
    if size["ddpm_steps"]:  # continuous-time twins: x0 (ProDiff) and eps (DiffSpeech) parameterisation
        ts50 = torch.linspace(1.0, 0.0, 51, dtype=torch.float64)
        for prediction in ("x0", "eps"):
            twin = new_model(0)
            train_teacher(twin, schedule, ts4, train.data(), _config(size["ddpm_steps"], TEACHER_LR, 0),
                          window=WINDOW, time_sampling="continuous", prediction=prediction)
            runs[f"{prediction}-cont@4"] = (twin, ts4, "ddim", prediction)
            runs[f"{prediction}-cont ddpm@50"] = (twin, ts50, "ddpm", prediction)
            stages.update()
    stages.close()

    # mel generation with ground-truth durations, same starting noise for every method
    mels = {}
    for name, (model, ts, sampler, prediction) in runs.items():
        g = torch.Generator().manual_seed(123)
        mels[name], _ = synthesize(model, schedule, ts, test.phonemes, test.style, durations=test.durations,
                                   sampler=sampler, generator=g, prediction=prediction)
    ref_detail = spectral_detail(test.mel, test.frames).mean()
    n_f0 = len(test) if size["f0_utterances"] is None else size["f0_utterances"]
    hop, rate = MelConfig().hop_length, MelConfig().sample_rate
    ref_f0 = [f0_contour(test.waves[i][:(int(test.frames[i]) - 1) * hop]) for i in range(n_f0)]
    table = {}
    for name in bench_progress(["reference+GL", *runs], desc="prodiff: evaluation"):
        mel = test.mel if name == "reference+GL" else mels[name]
        f0 = [f0_cents_error(vocode(mel[i], int(test.frames[i]), seed=i), ref_f0[i]) for i in range(n_f0)]
        cents = [r["cents"] for r in f0 if math.isfinite(r["cents"])]
        row = {"mel_l1": float(mel_l1(mel, test.mel, test.frames).mean()),
               "l1_to_teacher4": float(mel_l1(mel, mels["teacher@4"], test.frames).mean()),
               "detail_ratio": float(spectral_detail(mel, test.frames).mean() / ref_detail),
               "f0_cents": float(np.mean(cents)) if cents else float("nan"),
               "voicing_error": float(np.mean([r["voicing_error"] for r in f0]))}
        if name in runs:
            model, ts, sampler, prediction = runs[name]
            row["nfe"] = len(ts) - 1
            row.update({f"rtf_{k}" if k != "rtf" else "rtf": v for k, v in real_time_factor(
                model, schedule, ts, test.phonemes[:size["rtf_utterances"]], test.style[:size["rtf_utterances"]],
                sampler=sampler, prediction=prediction).items()})
        table[name] = row

    # duration predictor on the test texts (text-only synthesis uses it)
    with torch.no_grad():
        _, log_d = teacher.encode(test.phonemes, test.style)
        d_hat = teacher.predicted_durations(log_d, test.phonemes)
    pmask = test.phonemes.ne(0)
    durations = {"mean_abs_error_frames": float((d_hat - test.durations).abs()[pmask].float().mean()),
                 "total_length_ratio": float((d_hat.sum(1).float() / test.durations.sum(1).float()).mean())}

    files = {}
    if not quick:  # a few examples: reference, teacher@4 (gt durations), student@2 from text alone
        for i in range(min(3, len(test))):
            f = int(test.frames[i])
            files[f"prodiff_{i}_reference.wav"] = _wav_bytes(test.waves[i], rate)
            files[f"prodiff_{i}_teacher4.wav"] = _wav_bytes(vocode(mels["teacher@4"][i], f), rate)
            g = torch.Generator().manual_seed(7 + i)
            n_ph = int(test.phonemes[i].ne(0).sum())
            mel_txt, fr = synthesize(s2.model, schedule, s2.ts, test.phonemes[i:i + 1, :n_ph], test.style[i:i + 1],
                                     generator=g)
            files[f"prodiff_{i}_student2_from_text.wav"] = _wav_bytes(vocode(mel_txt[0], int(fr[0])), rate)

    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    f = int(test.frames[0])
    shown = [("reference", test.mel), ("teacher@4", mels["teacher@4"]), ("teacher@1", mels["teacher@1"]),
             ("student@2", mels["student@2"]), ("student@1", mels["student@1"])]
    for ax, (name, mel) in zip(axes.flat, shown):
        ax.imshow(mel[0, :, :f].numpy(), origin="lower", aspect="auto", cmap="magma", vmin=-1, vmax=1)
        ax.set_title(f"{name}: '{test.texts[0]}'", fontsize=9)
    ax = axes.flat[-1]
    names = list(runs)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [table[n]["mel_l1"] for n in names], 0.4, label="mel L1 to reference")
    ax.bar(x + 0.2, [table[n]["l1_to_teacher4"] for n in names], 0.4, label="L1 to teacher@4 (same noise)")
    ax.set_yscale("log")  # the eps twin is 10-100x worse than the rest
    ax.set_xticks(x, names, rotation=30, fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title(f"{len(test)} held-out utterances, gt durations", fontsize=9)
    fig.tight_layout()

    summary = "; ".join(f"{n}: L1 {r['mel_l1']:.4f}, to-T4 {r['l1_to_teacher4']:.4f}, f0 {r['f0_cents']:.0f} c"
                        for n, r in table.items())
    return {"size": size, "teacher_grid": list(TEACHER_GRID), "schedule": schedule.config(),
            "num_train_utterances": len(train), "num_test_utterances": len(test), "test_texts": sorted(set(test.texts)),
            "f0_utterances": n_f0, "table": table, "durations": durations,
            "summary": summary, "files": files}, fig


register_bench("prodiff", "ProDiff TTS on the espeak-ng corpus: 4-step x0 teacher distilled to 2 / 1 steps vs the "
                          "teacher at 2 / 1 steps (mel L1, f0 cents, RTF)")(_run)
