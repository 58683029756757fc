"""UNet vs DiT on digits at (nearly) equal parameters and equal training steps (DiT: Peebles & Xie 2023,
arXiv 2212.09748; the UNet is the ADM-style net of ``nets.unet``).

Both nets are trained on the digits train split with the same loss (eps prediction, linear discrete VP of 1000
steps, label dropout 0.1), the same seed, data order, batch (128), warmup and EMA (0.995: the trainer's EMA has
no warm-up, and at 0.999 a 3000-step average still holds 5% of the initial weights, which made the FD curves jump
up and down), each at its recipe learning rate (UNet 2e-3 as the zoo's ``digits_unet``; DiT 1e-3, the usual lower
rate for transformers, ``DIGITS_DIT_TRAIN``). The UNet is the zoo's ``DIGITS_NET`` (756k parameters); the DiT is
the zoo's ``DIGITS_DIT_NET`` (patch 2 -> 16 tokens, width 96, depth 4, 4 heads; 724k). Digits-FD (the zoo
classifier's features, samples vs the test split) and class accuracy of 50 samples per class are measured every
``eval_every`` steps with the project's default sampler (``samplers.DEFAULT``) at guidance 1 and 2.

Compute is reported three ways, none used as the budget: training FLOPs per example (forward + backward = 3 x
the forward count of ``torch.utils.flop_counter``), so curves can be read at equal FLOPs; training steps per
second, from interleaved timings of the two nets on the same batches (median of ``timing_rounds`` rounds, so
both see the same machine load); and sampling milliseconds per image at the default 10 steps.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..data import load_dataset
from ..metrics import class_accuracy, digits_fd
from ..nets import build_net, count_parameters
from ..training import TrainConfig, Trainer
from ..zoo import load as zoo_load
from ..zoo.recipes import (DIGITS_DIT_NET, DIGITS_DIT_TRAIN, DIGITS_LOSS, DIGITS_NET, DIGITS_SCHEDULE, make_loss,
                           sample_digits)
from . import bench_progress, register_bench

ARMS = {"unet": (DIGITS_NET, 2e-3), "dit": (DIGITS_DIT_NET, DIGITS_DIT_TRAIN["lr"])}
FULL = {"steps": 3000, "eval_every": 500, "n_per_class": 50, "timing_rounds": 15}
QUICK = {"steps": 150, "eval_every": 75, "n_per_class": 10, "timing_rounds": 3}


def forward_flops(net: torch.nn.Module, batch: int = 1) -> int:
    """FLOPs of one forward pass on ``batch`` digits (torch.utils.flop_counter; 2 per multiply-add)."""
    x = torch.zeros(batch, 1, 8, 8)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, torch.full((batch,), 500.0), class_labels=torch.zeros(batch, dtype=torch.long))
    return int(counter.get_total_flops())


def _metrics(denoiser, classifier, test_x, n_per_class: int, guidance: float) -> dict:
    labels = torch.arange(10).repeat_interleave(n_per_class)
    samples = sample_digits(denoiser, labels, guidance=guidance, solver="default", seed=0)
    return {"digits_fd": digits_fd(samples, test_x, classifier=classifier),
            "class_accuracy": class_accuracy(samples, labels, classifier=classifier)}


def _interleaved_step_times(nets: dict, losses: dict, data: tuple, rounds: int) -> dict:
    """Median seconds per training step (forward + backward + AdamW) of each net, timed alternately."""
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(data[0]), (128,), generator=gen)
    batch = (data[0][idx], data[1][idx])
    opts = {name: torch.optim.AdamW(net.parameters(), lr=1e-6) for name, net in nets.items()}
    times = {name: [] for name in nets}
    for r in range(rounds + 1):
        for name, net in nets.items():
            t0 = time.perf_counter()
            loss = losses[name](net, batch, torch.Generator().manual_seed(r)).mean()
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def _sample_ms(denoiser, rounds: int) -> float:
    labels = torch.arange(10).repeat_interleave(10)
    times = []
    for r in range(max(2, rounds // 3)):
        t0 = time.perf_counter()
        sample_digits(denoiser, labels, guidance=1.0, solver="default", seed=r)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / len(labels)


@register_bench("dit", "UNet vs DiT on digits at equal parameters and steps: FD, accuracy, FLOPs, steps/s")
def run(quick: bool = False):
    import matplotlib.pyplot as plt

    cfg = QUICK if quick else FULL
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    classifier = zoo_load("digits_classifier")
    results, trained, losses = {}, {}, {}
    for name in bench_progress(list(ARMS), desc="dit: arms"):
        net_config, lr = ARMS[name]
        torch.manual_seed(0)
        net = build_net(net_config)
        loss = make_loss(DIGITS_SCHEDULE, DIGITS_LOSS)
        curve = []

        def evaluate(model, step, loss=loss, curve=curve):
            den = loss.denoiser(model)
            point = {"step": step}
            for g in (1.0, 2.0):
                m = _metrics(den, classifier, test.x, cfg["n_per_class"], g)
                point.update({f"{k}_g{g:g}": v for k, v in m.items()})
            curve.append(point)
            return {k: v for k, v in point.items() if k != "step"}

        untrained = evaluate(net.eval(), 0)
        net.train()
        tc = TrainConfig(steps=cfg["steps"], batch_size=128, lr=lr, warmup_steps=min(200, cfg["steps"] // 3),
                         ema_decay=0.995 if not quick else 0.9, seed=0, eval_every=cfg["eval_every"],
                         log_every=10**9, progress=False)
        trainer = Trainer(net, loss, (train.x, train.y), tc, eval_fn=evaluate)
        history = trainer.fit()
        flops = forward_flops(net)
        results[name] = {"config": net_config, "lr": lr, "params": count_parameters(net),
                         "forward_flops_per_example": flops, "train_flops_per_example": 3 * flops,
                         "train_seconds": history["seconds"], "untrained": untrained, "curve": curve,
                         "final": curve[-1]}
        trained[name] = trainer.ema_model.eval()
        losses[name] = loss

    step_s = _interleaved_step_times({n: build_net(ARMS[n][0]) for n in ARMS}, losses, (train.x, train.y),
                                     cfg["timing_rounds"])
    for name in ARMS:
        results[name]["train_steps_per_s"] = 1.0 / step_s[name]
        results[name]["sample_ms_per_image"] = _sample_ms(losses[name].denoiser(trained[name]), cfg["timing_rounds"])
    ratio = results["dit"]["train_steps_per_s"] / results["unet"]["train_steps_per_s"]
    u, d = results["unet"]["final"], results["dit"]["final"]
    summary = (f"after {cfg['steps']} steps at {results['unet']['params'] / 1e3:.0f}k vs "
               f"{results['dit']['params'] / 1e3:.0f}k parameters: digits-FD UNet {u['digits_fd_g1']:.2f} "
               f"(acc {u['class_accuracy_g1']:.3f}) vs DiT {d['digits_fd_g1']:.2f} (acc {d['class_accuracy_g1']:.3f}) "
               f"at guidance 1; DiT trains at {ratio:.2f}x the UNet's steps/s, "
               f"{results['dit']['forward_flops_per_example'] / results['unet']['forward_flops_per_example']:.2f}x "
               "its FLOPs per example")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, color in (("unet", "tab:blue"), ("dit", "tab:orange")):
        r = results[name]
        steps = [p["step"] for p in r["curve"]]
        tflops = [s * 128 * r["train_flops_per_example"] / 1e12 for s in steps]
        for g, style in ((1, "-"), (2, "--")):
            fd = [p[f"digits_fd_g{g}"] for p in r["curve"]]
            axes[0].plot(steps, fd, style, color=color, marker="o", label=f"{name} guidance {g}")
            axes[1].plot(tflops, fd, style, color=color, marker="o", label=f"{name} guidance {g}")
        axes[2].plot(steps, [p["class_accuracy_g1"] for p in r["curve"]], color=color, marker="o", label=name)
    for ax, xl in zip(axes, ("training step", "training TFLOPs", "training step")):
        ax.set_xlabel(xl)
    axes[0].set_ylabel("digits-FD (lower is better)")
    axes[1].set_ylabel("digits-FD")
    axes[2].set_ylabel("class accuracy (guidance 1)")
    for ax in axes[:2]:
        ax.set_yscale("log")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"UNet vs DiT on digits; DiT {ratio:.2f}x the UNet's training steps/s (interleaved medians)")
    fig.tight_layout()
    return {"summary": summary, "arms": results, "dit_over_unet_steps_per_s": ratio, "budget": cfg,
            "sampler": "samplers.DEFAULT (10 steps, searched or fallback grid)"}, fig


__all__ = ["forward_flops", "run"]
