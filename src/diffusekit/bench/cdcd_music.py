"""CDCD on music (Zhu et al., ICLR 2023, arXiv 2206.07771): do the contrastive terms make motion-conditioned music
follow ITS motion more closely? ``diffusekit bench cdcd_music``.

Data (``domains.audio.music``): 32-beat melodies, one token per beat (rest or one of 12 major-scale degrees in 3
registers), each paired with a "motion" sequence (per beat: still, or moving at level 1..3, in gestures of 2-6
beats). The rule: still -> rest, moving at level r -> a note of register r; within a gesture the melody is a random
walk, so a motion has many valid melodies. Train: 200 motions x 4 melodies; test: other motions x 4.

Model: ``methods.cdcd_music.MotionMusicTransformer`` (2 adaLN-Zero DiT blocks, width 48, motion through
cross-attention only), absorbing [MASK] chain with T = 20 (CDCD uses 80), trained with L_vb + lambda_aux (1 + t/T) CE
(lambda_aux = 5e-4) plus the CDCD term (step-wise or sample-wise; intra negatives = own music with 8 chunks shuffled,
inter negatives = music of another motion; 10 negatives; per-token KL clipped at log K). Every model: same
initialisation, data order and loss noise (seed 0; AdamW lr 1e-3, batch 64); lambda_c = 0 also with seed 1.

Measured at every ``eval_every`` training steps, on the test motions with the same per-sample seeds (ancestral,
T steps): ``consistency`` (fraction of beats obeying the rule), ``rhythm`` (rest iff still), ``retrieval`` (an exact
matcher, the fraction of consistent beats, picks the true motion among 10 candidates; chance 0.1), ``diversity``
(mean fraction of differing beats between two samples of one motion; the test data's own value is in
``reference``) and ``smoothness`` (melodic steps <= 1 degree inside a gesture; data: 1.0).
"""

from __future__ import annotations

import time

import numpy as np

from ..domains.audio.music import motion_music_pairs, piano_roll, render_audio
from ..methods.cdcd_music import correspondence_metrics, music_cdcd_loss, sample_music, train_music_model
from ..methods.discrete import MaskReplaceDiffusion
from . import bench_progress, register_bench

NET = {"hidden_size": 48, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0}
FULL = {"steps": 400, "eval_every": 50, "num_steps": 20, "train_motions": 200, "test_motions": 60, "per_motion": 4,
        "runs": (("baseline", 0.0, "step", "intra", 0), ("baseline seed 1", 0.0, "step", "intra", 1),
                 ("step-intra 0.1", 0.1, "step", "intra", 0), ("step-intra 0.3", 0.3, "step", "intra", 0),
                 ("step-inter 0.1", 0.1, "step", "inter", 0), ("step-inter 0.3", 0.3, "step", "inter", 0),
                 ("sample-intra 0.1", 0.1, "sample", "intra", 0), ("sample-inter 0.1", 0.1, "sample", "inter", 0))}
QUICK = {"steps": 150, "eval_every": 50, "num_steps": 20, "train_motions": 200, "test_motions": 40, "per_motion": 4,
         "runs": (("baseline", 0.0, "step", "intra", 0), ("step-intra 0.3", 0.3, "step", "intra", 0))}
SHOWN = ("consistency", "retrieval", "diversity")


def run_config(cfg: dict, *, quick: bool = False):
    """The bench for a config like ``FULL``; returns (result dict, figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..domains.audio.wavio import wav_bytes

    train = motion_music_pairs(cfg["train_motions"], cfg["per_motion"], seed=0, split="train")
    test = motion_music_pairs(cfg["test_motions"], cfg["per_motion"], seed=0, split="test")
    music = train.config
    process = MaskReplaceDiffusion(music.num_tokens, cfg["num_steps"], absorbing=True)
    seeds = range(len(test))

    def evaluate(net, step):
        tokens = sample_music(process, net, test.motion, seeds)
        return correspondence_metrics(tokens, test.motion, test.motion_id, music)

    table, finals = {}, {}
    for name, lam, mode, kind, seed in bench_progress(cfg["runs"], desc="cdcd_music: models"):
        loss = music_cdcd_loss(process, train, lambda_c=lam, mode=mode, negatives=kind)
        t0 = time.perf_counter()
        net, info = train_music_model(train, loss, steps=cfg["steps"], seed=seed, net_kwargs=NET,
                                      eval_fn=evaluate, eval_every=cfg["eval_every"])
        t1 = time.perf_counter()
        finals[name] = sample_music(process, net, test.motion, seeds)
        final = correspondence_metrics(finals[name], test.motion, test.motion_id, music)
        table[name] = {"lambda_c": lam, "mode": mode, "negatives": kind, "seed": seed,
                       "train_and_eval_seconds": t1 - t0, "sample_seconds": time.perf_counter() - t1,
                       "final": final, "curve": info["evals"],
                       "curve_mean": {k: sum(e[k] for e in info["evals"]) / len(info["evals"]) for k in SHOWN}}
    reference = correspondence_metrics(test.tokens, test.motion, test.motion_id, music)

    fig = plt.figure(figsize=(16, 8.5))
    layout = fig.add_gridspec(2, 3)
    for i, metric in enumerate(SHOWN):
        ax = fig.add_subplot(layout[0, i])
        for name, row in table.items():
            style = ":" if name.startswith("baseline") else "o-" if "intra" in name else "s--"
            ax.plot([e["step"] for e in row["curve"]], [e[metric] for e in row["curve"]], style, label=name, ms=3)
        ax.axhline(reference[metric], color="black", lw=0.8, label="test data")
        if metric == "retrieval":
            ax.axhline(reference["chance_retrieval"], color="grey", lw=0.8, ls="--", label="chance")
        ax.set_xlabel("training step")
        ax.set_title(f"{metric} (test motions, {len(test)} samples)", fontsize=9)
    fig.axes[0].legend(fontsize=7)
    compare = [n for n in ("baseline", "step-intra 0.3") if n in table]
    for j, index in enumerate((0, cfg["per_motion"])):
        ax = fig.add_subplot(layout[1, j])
        rows = [piano_roll(test.tokens[index], music)] + [piano_roll(finals[n][index], music) for n in compare]
        gap = np.full((1, music.beats), 0.4)
        stack = [(test.motion[index].numpy()[None, :] / music.levels).repeat(2, 0), gap]
        for r in rows:
            stack += [r[::-1], gap]
        ax.imshow(np.concatenate(stack[:-1]), aspect="auto", cmap="magma", interpolation="nearest")
        ax.set_yticks([1] + [3 + 13 * k + 6 for k in range(len(rows))], ["motion", "data"] + compare, fontsize=8)
        ax.set_xlabel("beat")
        ax.set_title(f"test motion {int(test.motion_id[index])}: piano rolls after {cfg['steps']} steps", fontsize=9)
    ax = fig.add_subplot(layout[1, 2])
    names = list(table)
    for k, metric in enumerate(("consistency", "retrieval")):
        ax.bar([i + 0.4 * k - 0.2 for i in range(len(names))], [table[n]["curve_mean"][metric] for n in names],
               width=0.4, label=f"{metric} (mean over checkpoints)")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("area under the learning curve", fontsize=9)
    fig.tight_layout()

    files = {}
    if not quick:
        for name in compare:
            files[f"cdcd_music_{name.replace(' ', '_')}.wav"] = wav_bytes(render_audio(finals[name][0], music))
        files["cdcd_music_data.wav"] = wav_bytes(render_audio(test.tokens[0], music))
    base = table["baseline"]

    def line(name):
        r = table[name]
        return (f"{name}: consistency {r['final']['consistency']:.3f}, retrieval {r['final']['retrieval']:.3f}, "
                f"diversity {r['final']['diversity']:.3f} at step {cfg['steps']}; curve mean consistency "
                f"{r['curve_mean']['consistency']:.3f} / retrieval {r['curve_mean']['retrieval']:.3f}")

    summary = "; ".join(line(n) for n in table) + (
        f" (test data: diversity {reference['diversity']:.3f}; baseline final consistency se "
        f"{base['final']['consistency_se']:.3f})")
    return {"config": {k: v for k, v in cfg.items() if k != "runs"}, "runs": [list(r) for r in cfg["runs"]],
            "net": NET, "music": music.to_dict(), "process": process.config, "num_test_samples": len(test),
            "reference_test_data": reference, "table": table, "summary": summary, "files": files}, fig


def _run(quick: bool):
    return run_config(QUICK if quick else FULL, quick=quick)


register_bench("cdcd_music", "CDCD on motion-conditioned music tokens: correspondence (beat consistency, motion "
                             "retrieval) and diversity vs training steps, lambda_c = 0 vs > 0, intra/inter "
                             "negatives")(_run)
