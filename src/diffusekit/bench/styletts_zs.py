"""StyleTTS-ZS (Li et al. 2024, arXiv 2409.10058) at our scale: a 16-token VQ prosody code of f0/energy contours,
EDM diffusion sampling of the code from text + a speaker prompt with CFG on the prompt, and its one-step
distillation, on held-out speakers of the espeak-ng corpus (zero-shot).

Data (``methods.styletts_zs_data``): pYIN log-f0 (interpolated over unvoiced frames) and log-RMS energy of the 240
utterances, resampled to 64 points per utterance and standardised; a speaker = an espeak-ng (voice, pitch) setting;
4 of 18 speakers (53 utterances) held out. Prompt = global style (mean/std of log-f0 and energy) of another
utterance of the same speaker; text = phoneme ids aligned to the 64 points (ground-truth durations).

Models (``methods.styletts_zs``): VQ autoencoder (64 codes, 8-d, 16 tokens), conv denoiser with FiLM (EDM
preconditioning, sigma in [0.002, 10], sigma_data 0.5, ln sigma ~ N(-1.2, 1.2^2), prompt dropped 10%), one-step
student distilled with a perceptual loss through the frozen decoder on teacher samples (guided Heun). Baselines:
"global style only" (the training mean contour shape scaled to the prompt's mean/std) and a deterministic
regression of the contour (the same network, one call at a fixed input, MSE on the decoded contour).

Metrics, on the held-out speakers (each held-out utterance with ``repeats`` prompts/noises): contour MMD^2 (unbiased,
RBF with bandwidth 0.35 x the median distance of the real held-out contours, on the standardised (2, 64) contours);
speaker f0 error = |mean log-f0 of the sample - the prompt speaker's mean| in semitones; network calls (counted);
real-time factor of style sampling + decoding at batch 1 on one thread (seconds per second of speech).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..core.denoiser import CountingDenoiser
from ..metrics.distances import _median_bandwidth
from ..methods.styletts_zs import SIGMA_MAX, prompt_guided, style_denoiser
from ..methods.styletts_zs_data import prosody_dataset
from ..methods.styletts_zs_train import (StyleCondition, contour_mmd, decode_style, distill_one_step,
                                         prompt_only_contours, regression_latent, sample_style, speaker_f0_error,
                                         style_latents, teacher_samples, train_prosody_vq, train_regression,
                                         train_style_diffusion)
from . import bench_progress, register_bench

FULL = {"vq_steps": 1500, "diffusion_steps": 3000, "regression_steps": 1500, "teacher_samples": 2048,
        "teacher_heun_steps": 16, "distill_steps": 1000, "repeats": 4, "euler_nfe": (1, 2, 4, 8, 16, 32),
        "heun_steps": (2, 4, 8, 16), "guidance": (0.0, 1.0, 2.0, 3.0), "rtf_utterances": 8}
QUICK = {"vq_steps": 200, "diffusion_steps": 400, "regression_steps": 200, "teacher_samples": 128,
         "teacher_heun_steps": 8, "distill_steps": 100, "repeats": 2, "euler_nfe": (1, 16), "heun_steps": (8,),
         "guidance": (0.0, 2.0), "rtf_utterances": 2}
GUIDANCE = 2.0
BANDWIDTH_FACTOR = 0.35


def _rtf(fn, conditions: list, seconds: float) -> float:
    """Wall seconds of ``fn(condition)`` over the conditions (batch 1) per second of speech."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for c in conditions:
            fn(c)
    return (time.perf_counter() - t0) / max(seconds, 1e-9)


def run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.set_num_threads(1)
    size = QUICK if quick else FULL
    data = prosody_dataset()
    stages = bench_progress(total=6, desc="styletts_zs: stages")
    clock = {"start": time.perf_counter()}

    def lap(name: str) -> None:
        now = time.perf_counter()
        clock[name], clock["start"] = now - clock["start"], now
        stages.update()

    vq, vq_hist = train_prosody_vq(data, size["vq_steps"], seed=0)
    lap("vq")
    latents = style_latents(vq, data)
    net, diff_hist = train_style_diffusion(data, latents, size["diffusion_steps"], seed=0)
    lap("diffusion")
    reg, _ = train_regression(data, vq, latents, size["regression_steps"], seed=0)
    lap("regression")
    noise, cond_t, targets = teacher_samples(net, data, size["teacher_samples"], guidance=GUIDANCE,
                                             steps=size["teacher_heun_steps"], seed=3)
    lap("teacher_samples")
    student, dist_hist = distill_one_step(net, vq, latents, noise, cond_t, targets, size["distill_steps"], seed=0)
    lap("distillation")

    real = data.contours[data.test]
    bandwidth = BANDWIDTH_FACTOR * _median_bandwidth(real.flatten(1).double())
    with torch.no_grad():
        rec = vq(real)[0]
        codes = vq.code_indices(vq.encode(data.contours[data.train]))
    constant = real.mean(-1, keepdim=True).expand_as(real)
    vq_row = {"reconstruction_mse": float((rec - real).pow(2).mean()),
              "constant_contour_mse": float((constant - real).pow(2).mean()),
              "codes_used": int(codes.unique().numel()), "codebook_size": int(vq.codebook.shape[0]),
              "tokens": int(codes.shape[1])}

    cond = StyleCondition.for_utterances(data, data.test, torch.Generator().manual_seed(5)).repeat(size["repeats"])
    shape = tuple(latents.y.shape[1:])

    def measure(contours: torch.Tensor, calls: int) -> dict:
        return {"mmd": contour_mmd(contours, real, bandwidth), "f0_error_semitones":
                speaker_f0_error(data, contours, cond.speaker), "network_calls": calls}

    def teacher_run(w: float, sampler: str, steps: int) -> tuple[torch.Tensor, int]:
        counted = CountingDenoiser(prompt_guided(net, w))
        y = sample_style(counted, cond, steps, sampler=sampler, generator=torch.Generator().manual_seed(1),
                         shape=shape)
        return decode_style(vq, latents, y), counted.calls

    table, shown = {}, {}
    for nfe in bench_progress(size["euler_nfe"], desc="styletts_zs: teacher euler"):
        table[f"teacher euler@{nfe}"] = measure(*teacher_run(GUIDANCE, "euler", nfe))
    for steps in bench_progress(size["heun_steps"], desc="styletts_zs: teacher heun"):
        contours, calls = teacher_run(GUIDANCE, "heun", steps)
        table[f"teacher heun@{2 * steps - 1}"] = measure(contours, calls)
        shown["teacher"] = contours
    guidance = {}
    for w in size["guidance"]:
        same = w == GUIDANCE and size["teacher_heun_steps"] in size["heun_steps"]
        guidance[f"w={w:g}"] = (table[f"teacher heun@{2 * size['teacher_heun_steps'] - 1}"] if same else
                                measure(*teacher_run(w, "heun", size["teacher_heun_steps"])))
    lap("evaluation")
    stages.close()
    calls = []
    with torch.no_grad():
        hook = student.net.register_forward_hook(lambda module, inputs, output: calls.append(1))
        y_student = student(torch.randn((len(cond.text), *shape), generator=torch.Generator().manual_seed(1)), cond)
        hook.remove()
        shown["student"] = decode_style(vq, latents, y_student)
        table["student@1 (distilled)"] = measure(shown["student"], len(calls))
        n = torch.randn((len(cond.text), *shape), generator=torch.Generator().manual_seed(1))
        init = style_denoiser(net)(SIGMA_MAX * n, torch.full((len(n),), SIGMA_MAX, dtype=torch.float64),
                                   **cond.cond())
        table["student@1 before distillation (teacher weights)"] = measure(decode_style(vq, latents, init), 1)
        shown["regression"] = decode_style(vq, latents, regression_latent(style_denoiser(reg), cond, shape))
        table["baseline: regression"] = measure(shown["regression"], 1)
    table["baseline: global style only"] = measure(prompt_only_contours(data, cond), 0)
    reference = {"train speakers' real contours": contour_mmd(data.contours[data.train], real, bandwidth),
                 "real f0 error (utterance vs its speaker)": speaker_f0_error(data, real, data.speakers[data.test])}

    # real-time factor at batch 1 (style sampling + decoding), one thread
    rtf_index = data.test[: size["rtf_utterances"]]
    singles = [StyleCondition.for_utterances(data, [i], torch.Generator().manual_seed(i), pool=data.test)
               for i in rtf_index]
    speech = float(data.seconds[rtf_index].sum())
    g = torch.Generator().manual_seed(0)
    teacher_steps = size["teacher_heun_steps"]
    rtf = {f"teacher heun@{2 * teacher_steps - 1} (CFG)": _rtf(
        lambda c: decode_style(vq, latents, sample_style(prompt_guided(net, GUIDANCE), c, teacher_steps, generator=g,
                                                         shape=shape)), singles, speech),
           "student@1": _rtf(lambda c: decode_style(vq, latents, student(torch.randn((1, *shape), generator=g), c)),
                             singles, speech)}

    best_teacher = f"teacher heun@{2 * teacher_steps - 1}"
    no_prompt, guided = guidance[f"w={size['guidance'][0]:g}"], guidance[f"w={GUIDANCE:g}"]
    s, t1 = table["student@1 (distilled)"], table["teacher euler@1"]
    summary = (f"StyleTTS-ZS prosody code (VQ {vq_row['tokens']} tokens x {vq_row['codebook_size']} codes, recon MSE "
               f"{vq_row['reconstruction_mse']:.3f} vs constant {vq_row['constant_contour_mse']:.3f}); held-out "
               f"speakers, contour MMD^2: teacher {table[best_teacher]['mmd']:.4f} at "
               f"{table[best_teacher]['network_calls']} calls, {t1['mmd']:.4f} at 1 call; distilled student "
               f"{s['mmd']:.4f} at {s['network_calls']} call; regression {table['baseline: regression']['mmd']:.4f}, "
               f"global style only {table['baseline: global style only']['mmd']:.4f}; speaker f0 error "
               f"{no_prompt['f0_error_semitones']:.2f} st without prompt -> "
               f"{guided['f0_error_semitones']:.2f} st with CFG w={GUIDANCE:g}; RTF "
               f"{rtf[f'teacher heun@{2 * teacher_steps - 1} (CFG)']:.4f} -> {rtf['student@1']:.4f}")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    for prefix, marker in (("teacher euler@", "o-"), ("teacher heun@", "s-")):
        rows = [(v["network_calls"], v["mmd"]) for k, v in table.items() if k.startswith(prefix)]
        ax.plot(*zip(*rows), marker, label=prefix.strip("@") + f" (CFG w={GUIDANCE:g})")
    for name, style in (("student@1 (distilled)", "r*"), ("student@1 before distillation (teacher weights)", "kx"),
                        ("baseline: regression", "gD")):
        ax.plot([1], [table[name]["mmd"]], style, markersize=10, label=name)
    ax.axhline(table["baseline: global style only"]["mmd"], color="grey", ls="--", label="global style only")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("network calls")
    ax.set_ylabel("contour MMD^2 (held-out speakers)")
    ax.legend(fontsize=6)
    ax = axes[1]
    ws = list(size["guidance"])
    ax.plot(ws, [guidance[f"w={w:g}"]["f0_error_semitones"] for w in ws], "o-", label="teacher (Heun)")
    ax.axhline(reference["real f0 error (utterance vs its speaker)"], color="grey", ls="--", label="real utterances")
    ax.set_xlabel("CFG scale w on the speaker prompt")
    ax.set_ylabel("|mean f0 - prompt speaker's| (semitones)")
    ax.legend(fontsize=7)
    ax = axes[2]
    i = 0
    hz = lambda c: np.exp(data.unstandardise(c[i:i + 1])[0, 0].numpy())  # noqa: E731
    ax.plot(hz(real), "k-", lw=2, label="real")
    for name, c in shown.items():
        ax.plot(hz(c), label=name)
    ax.set_title(f"held-out utterance {data.texts[data.test[i]]!r}", fontsize=8)
    ax.set_xlabel("contour frame (of 64)")
    ax.set_ylabel("f0 (Hz)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    result = {"summary": summary, "vq": vq_row, "contours": table, "guidance": guidance, "reference": reference,
              "rtf": rtf, "stage_seconds": {k: round(v, 2) for k, v in clock.items() if k != "start"},
              "bandwidth": bandwidth, "held_out_utterances": len(data.test), "repeats": size["repeats"],
              "budgets": {k: v for k, v in size.items() if k.endswith("steps") or k == "teacher_samples"},
              "final_losses": {"vq_mse": float(np.mean(vq_hist[-50:])), "diffusion": float(np.mean(diff_hist[-50:])),
                               "distillation": float(np.mean(dist_hist[-50:]))}}
    return result, fig


register_bench("styletts_zs", "StyleTTS-ZS: VQ prosody code, EDM style diffusion with prompt CFG, 1-step distillation")(
    run)
