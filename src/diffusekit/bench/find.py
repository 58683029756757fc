"""FIND (learned initial-noise distribution) on the ring toy model and the unconditional digits model.

Ring (``toy_ring8``, DDIM-8): reward = 1 if the sample lies within 0.5 of the mode at (2, 0), one of eight
equal modes. Digits (``digits_unet`` with the null class, DDIM-8): reward = the digits classifier's
probability of a rare target class. For full FIND (value baseline, ratio clamp against N(0, I), L2
regulariser) and the ablations "no baseline" and "no clipping", we record the mean rollout reward per
iteration and the final hit rate on fresh draws against the N(0, I) baseline; for digits also the sample
diversity (mean pairwise L2 distance), the target-class accuracy by the rewarding classifier and by the
independent SVM judge (:mod:`diffusekit.metrics.judge`; the first is optimistic, the reward is optimised
against it) and digits-FD to the test images of the target class, each with equal sample counts.
"""

from __future__ import annotations

import time

import torch

from ..data import load_dataset
from ..methods.find import FINDConfig, class_prob_reward, ddim_decoder, evaluate_policy, mode_hit_reward, train_find
from ..metrics import digits_fd, judge_accuracy
from . import bench_progress, register_bench

VARIANTS = {"find": {}, "no_baseline": {"baseline": "none"}, "no_clip": {"clip": "none"}}
DIGITS_TARGET = 2


def _pairwise_diversity(x: torch.Tensor) -> float:
    f = x.flatten(1)
    d = torch.cdist(f, f)
    n = f.shape[0]
    return float(d.sum() / (n * (n - 1)))


def _run_problem(decode, reward, shape, cfg_kw, n_eval):
    base, x_base = evaluate_policy(None, decode, reward, n=n_eval, seed=1, shape=shape)
    rows, samples = {}, {"n01": x_base}
    for name, kw in bench_progress(VARIANTS.items(), desc="find: variants", total=len(VARIANTS)):
        t0 = time.perf_counter()
        policy, hist = train_find(decode, reward, shape, FINDConfig(**cfg_kw, **kw))
        hit, x = evaluate_policy(policy, decode, reward, n=n_eval, seed=1)
        rows[name] = {"reward_history": hist["reward"], "nfe": hist["nfe"], "final_reward": hit,
                      "kl_to_prior": hist["kl_to_prior"][-1], "std_mean": hist["std_mean"][-1],
                      "train_seconds": time.perf_counter() - t0}
        samples[name] = x
    return base, rows, samples


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import zoo
    from ..plotting import image_grid

    ring_cfg = {"iterations": 20 if quick else 60, "batch_size": 32 if quick else 64, "seed": 0}
    dig_cfg = {"iterations": 10 if quick else 50, "batch_size": 32 if quick else 64, "seed": 0}
    n_eval = 256 if quick else 2000
    n_eval_dig = 128 if quick else 500

    ring = zoo.load("toy_ring8")
    ring_dec, ring_rew = ddim_decoder(ring, steps=8), mode_hit_reward([2.0, 0.0], 0.5)
    ring_base, ring_rows, ring_x = _run_problem(ring_dec, ring_rew, (2,), ring_cfg, n_eval)

    unet, clf = zoo.load("digits_unet"), zoo.load("digits_classifier")
    dig_dec = ddim_decoder(unet, steps=8, cond={"class_labels": torch.tensor([unet.null_class])})
    dig_rew = class_prob_reward(clf, DIGITS_TARGET)
    dig_base, dig_rows, dig_x = _run_problem(dig_dec, dig_rew, (1, 8, 8), dig_cfg, n_eval_dig)
    test = load_dataset("digits", "test")
    ref = test.x[test.y == DIGITS_TARGET]
    extra = {}
    for name, x in dig_x.items():
        x = x.clamp(-1, 1)
        with torch.no_grad():
            acc = float((clf(x).argmax(-1) == DIGITS_TARGET).float().mean())
        judged = judge_accuracy(x, torch.full((len(x),), DIGITS_TARGET))
        extra[name] = {"diversity": _pairwise_diversity(x), "target_accuracy": acc, "judge_target_accuracy": judged,
                       "digits_fd_to_target_class": digits_fd(x, ref, classifier=clf)}
    for name in dig_rows:
        dig_rows[name].update(extra[name])
    extra["reference_target_class"] = {"diversity": _pairwise_diversity(ref)}

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, rows, base, title in ((axes[0], ring_rows, ring_base, "ring8: P(within 0.5 of mode (2,0))"),
                                  (axes[1], dig_rows, dig_base, f"digits: p(class {DIGITS_TARGET})")):
        for name, row in rows.items():
            ax.plot(range(1, len(row["reward_history"]) + 1), row["reward_history"], label=name)
        ax.axhline(base, color="grey", ls="--", lw=1, label="N(0, I)")
        ax.set_xlabel("iteration")
        ax.set_ylabel("mean batch reward")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for name, c in zip(["n01", *VARIANTS], ["grey", "C0", "C1", "C2"]):
        x = ring_x[name][:1000]
        axes[2].scatter(x[:, 0], x[:, 1], s=2, alpha=0.4, color=c, label=name)
    axes[2].set_aspect("equal")
    axes[2].set_title("ring8 samples", fontsize=9)
    axes[2].legend(fontsize=7, markerscale=4)
    tiles = torch.cat([dig_x[k][:16].clamp(-1, 1) for k in ["n01", *VARIANTS]])
    axes[3].imshow(image_grid(tiles, 16), cmap="gray")
    axes[3].set_title("digits rows: N(0, I), find, no_baseline, no_clip", fontsize=9)
    axes[3].axis("off")
    fig.tight_layout()

    f = dig_rows["find"]
    summary = (f"ring8 hit rate N(0,I) {ring_base:.3f} -> FIND {ring_rows['find']['final_reward']:.3f} "
               f"(no baseline {ring_rows['no_baseline']['final_reward']:.3f}, no clip "
               f"{ring_rows['no_clip']['final_reward']:.3f}; KL {ring_rows['find']['kl_to_prior']:.2f} vs "
               f"{ring_rows['no_clip']['kl_to_prior']:.2f} nats); digits p({DIGITS_TARGET}) {dig_base:.3f} -> FIND "
               f"{f['final_reward']:.3f} (no baseline {dig_rows['no_baseline']['final_reward']:.3f}, no clip "
               f"{dig_rows['no_clip']['final_reward']:.3f}); judge accuracy {extra['n01']['judge_target_accuracy']:.3f}"
               f" -> {f['judge_target_accuracy']:.3f}; diversity {extra['n01']['diversity']:.2f} -> "
               f"{f['diversity']:.2f}, FD to class {DIGITS_TARGET} {extra['n01']['digits_fd_to_target_class']:.2f} "
               f"-> {f['digits_fd_to_target_class']:.2f}")
    result = {
        "ring8": {"target_mode": [2.0, 0.0], "radius": 0.5, "sampler": "ddim, 8 steps, logsnr grid",
                  "baseline_hit_rate": ring_base, "config": FINDConfig(**ring_cfg).to_dict(), "variants": ring_rows,
                  "num_eval": n_eval},
        "digits": {"target_class": DIGITS_TARGET, "sampler": "ddim, 8 steps, trailing, null class",
                   "baseline_reward": dig_base, "baseline": extra["n01"],
                   "reference_target_class": extra["reference_target_class"],
                   "config": FINDConfig(**dig_cfg).to_dict(), "variants": dig_rows, "num_eval": n_eval_dig},
        "summary": summary,
    }
    return result, fig


register_bench("find", "FIND learned initial-noise policy: ring mode / rare digit class reward, ablations")(_run)
