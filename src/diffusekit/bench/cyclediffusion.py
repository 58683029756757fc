"""CycleDiffusion (Wu & De la Torre, ICCV 2023, arXiv 2210.05559) against SDEdit and DDIM inversion on digits.

(a) **Unpaired domain translation, digits -> thick digits.** Two small unconditional UNets (base 16, mults (1, 2), no
attention; eps prediction, linear VP 1000 schedule; AdamW 2e-3, batch 64, EMA 0.995) are trained independently with
our ``Trainer`` + ``DiffusionLoss``: the source on the digits train split, the target on ``thick_digits`` of it
(grey dilation at 2x resolution). Test inputs: the digits test split. Judges: a logistic regression on pixels,
digits vs thick digits (train split), for the target attribute ("thick" rate); the zoo digits classifier for the
class (kept = predicted class equals the true label; its accuracy on the ideal output thick_digits(x) is the
ceiling); SSIM (``metrics.ssim``, 7 x 7 window, data range 2) to the input and to the paired ideal output
thick_digits(x), which this synthetic pair happens to have. Methods, each on a uniform grid of ``steps`` steps from
t_0: CycleDiffusion (source DPM-Encoder, target decoder; grid to t_min) at several (t_0, eta); SDEdit (noise the
input to t_0, the target's DDPM sampler to t = 0) at several t_0; DDIM inversion (eta = 0, source inverts, target
decodes). Same-model reconstruction (the source decodes its own latent) is reported for both encoders.

(b) **Zero-shot class edit with one conditional model** (zoo ``digits_unet``): encode with the true class a, decode
with b = a + 1 mod 10. Target-class rate and SSIM to the input; SDEdit decodes with class b from the noised input;
DDIM inversion inverts with a and decodes with b. Each method traces an accuracy / SSIM trade-off through t_0 (and
eta); ``frontier`` gives each method's best SSIM among its settings that reach a target-class rate of at least
0.7 and 0.9 ("content preservation at equal edit accuracy").

(c) **Latent-energy guidance**: the DPM-Encoder latent of the input (class a, t_0 = 0.5, eta = 0.5) is moved by
gradient / Langevin steps on lam E(G(z)) + ||z||^2/2 with E = -log p_clf(b | x) (the digits classifier), decoding
with class a: the edit comes from the energy alone.
"""

from __future__ import annotations

import time

import torch

from ..core import NetworkDenoiser, VPDiscrete
from ..data.digits import load_digits_split
from ..methods.cyclediffusion import (classifier_energy, cycle_diffusion, ddim_inversion_translate, dpm_decode,
                                      dpm_encode, latent_energy_guidance, sdedit, thick_digits, translation_grid)
from ..metrics import ssim
from ..nets import UNet
from ..training import DiffusionLoss, TrainConfig, Trainer
from . import bench_progress, register_bench

FULL = {"train_steps": 1500, "steps": 20, "n_domain": 200, "n_edit": 100, "n_guide": 32, "guide_steps": 5,
        "cycle_domain": [(1.0, 0.1), (1.0, 1.0), (0.7, 1.0), (0.5, 1.0), (0.5, 0.1), (0.3, 1.0), (0.3, 0.1)],
        "sdedit_domain": [0.1, 0.2, 0.3, 0.5], "ddim_domain": [1.0, 0.5, 0.3],
        "cycle_edit": [(0.3, 0.1), (0.3, 0.5), (0.3, 1.0), (0.5, 0.1), (0.5, 1.0)],
        "sdedit_edit": [0.1, 0.15, 0.2, 0.25, 0.3, 0.4], "ddim_edit": [0.3, 0.4, 0.5]}
QUICK = {"train_steps": 30, "steps": 10, "n_domain": 24, "n_edit": 40, "n_guide": 6, "guide_steps": 2,
         "cycle_domain": [(1.0, 1.0)], "sdedit_domain": [0.3], "ddim_domain": [1.0],
         "cycle_edit": [(0.3, 0.1), (0.3, 1.0), (0.5, 0.1)], "sdedit_edit": [0.2, 0.3], "ddim_edit": [0.4]}
LEVELS = (0.7, 0.9)


def train_domain_denoiser(x: torch.Tensor, steps: int, seed: int) -> tuple[NetworkDenoiser, dict]:
    """A small unconditional eps-predicting UNet trained on images ``x`` (N, 1, 8, 8) with Trainer + DiffusionLoss
    on the linear VP 1000 schedule; returns its EMA denoiser and {steps, seconds}."""
    torch.manual_seed(seed)
    net = UNet(base_channels=16, channel_mult=(1, 2), attention_resolutions=[], num_classes=None)
    loss = DiffusionLoss(VPDiscrete.named("linear", 1000), "eps")
    cfg = TrainConfig(steps=steps, batch_size=64, lr=2e-3, warmup_steps=min(50, steps), ema_decay=0.995, seed=seed,
                      progress=False, log_every=10**9)
    trainer = Trainer(net, loss, (x,), cfg)
    t0 = time.perf_counter()
    trainer.fit()
    ema = trainer.ema_model.eval()
    return loss.denoiser(ema), {"steps": steps, "seconds": time.perf_counter() - t0}


def _pixel_judge(x_source: torch.Tensor, x_target: torch.Tensor):
    """Logistic regression on pixels, source (0) vs target (1) domain; returns x -> predicted labels (numpy)."""
    from sklearn.linear_model import LogisticRegression

    feats = torch.cat([x_source, x_target]).flatten(1).numpy()
    labels = [0] * len(x_source) + [1] * len(x_target)
    model = LogisticRegression(max_iter=3000).fit(feats, labels)
    return lambda x: model.predict(x.flatten(1).numpy())


def frontier(rows: list[dict], level: float, acc_key: str = "target_acc", ssim_key: str = "ssim_src") -> float | None:
    """Best ``ssim_key`` among the settings whose ``acc_key`` reaches ``level`` (None when none does)."""
    ok = [r[ssim_key] for r in rows if r[acc_key] >= level]
    return max(ok) if ok else None


def _domain(cfg: dict, quick: bool) -> tuple[dict, dict]:
    clf = _classifier()
    x_train, _ = load_digits_split("train")
    x, y = load_digits_split("test")
    x, y = x[:cfg["n_domain"]], y[:cfg["n_domain"]]
    thick_train = thick_digits(x_train)
    source, info_s = train_domain_denoiser(x_train, cfg["train_steps"], seed=0)
    target, info_t = train_domain_denoiser(thick_train, cfg["train_steps"], seed=1)
    judge = _pixel_judge(x_train, thick_train)
    ideal = thick_digits(x)

    def measure(out: torch.Tensor, method: str, **setting) -> dict:
        out = out.clamp(-1, 1)
        with torch.no_grad():
            pred = clf(out).argmax(1)
        return {"method": method, **setting, "target_acc": float(judge(out).mean()),
                "class_kept": float((pred == y).float().mean()), "ssim_src": float(ssim(out, x).mean()),
                "ssim_ideal": float(ssim(out, ideal).mean())}

    sched = source.schedule
    jobs = [("cycle", {"t0": t0, "eta": eta}) for t0, eta in cfg["cycle_domain"]] + \
        [("sdedit", {"t0": t0}) for t0 in cfg["sdedit_domain"]] + [("ddim_inversion", {"t0": t0})
                                                                    for t0 in cfg["ddim_domain"]]
    rows, shown = [measure(x, "input"), measure(ideal, "ideal thick_digits(x)")], {}
    with torch.no_grad():
        for method, s in bench_progress(jobs, desc="cyclediffusion: domain translation"):
            g = torch.Generator().manual_seed(0)
            if method == "cycle":
                out = cycle_diffusion(source, target, x, translation_grid(sched, cfg["steps"], t_start=s["t0"]),
                                      eta=s["eta"], generator=g)
            elif method == "sdedit":
                out = sdedit(target, x, translation_grid(sched, cfg["steps"], t_start=s["t0"], t_end=0.0), generator=g)
            else:
                out = ddim_inversion_translate(source, target, x,
                                               translation_grid(sched, cfg["steps"], t_start=s["t0"], t_end=0.0))
            rows.append(measure(out, method, **s))
            shown[f"{method} " + " ".join(f"{k}={v}" for k, v in s.items())] = out[:10]
        ts = translation_grid(sched, cfg["steps"])
        recon_cycle = float((cycle_diffusion(source, source, x, ts, eta=1.0, generator=torch.Generator().manual_seed(0))
                             - x).abs().max())
        ts0 = translation_grid(sched, cfg["steps"], t_end=0.0)
        recon_ddim = float((ddim_inversion_translate(source, source, x, ts0) - x).abs().mean())
    return {"train": {"source": info_s, "target": info_t}, "num_test": len(x), "table": rows,
            "reconstruction": {"cycle_max_abs_err": recon_cycle, "ddim_inversion_mean_abs_err": recon_ddim}}, \
        {"input": x[:10], "ideal": ideal[:10], **shown}


def _classifier():
    from .. import zoo

    return zoo.load("digits_classifier")


def _class_edit(cfg: dict) -> tuple[dict, dict]:
    from .. import zoo

    den, clf = zoo.load("digits_unet"), _classifier()
    x, y = load_digits_split("test")
    x, y = x[:cfg["n_edit"]], y[:cfg["n_edit"]]
    b = (y + 1) % 10
    src, tgt = {"class_labels": y}, {"class_labels": b}

    def measure(out: torch.Tensor, method: str, **setting) -> dict:
        out = out.clamp(-1, 1)
        with torch.no_grad():
            pred = clf(out).argmax(1)
        return {"method": method, **setting, "target_acc": float((pred == b).float().mean()),
                "class_kept": float((pred == y).float().mean()), "ssim_src": float(ssim(out, x).mean())}

    sched = den.schedule
    jobs = [("cycle", {"t0": t0, "eta": eta}) for t0, eta in cfg["cycle_edit"]] + \
        [("sdedit", {"t0": t0}) for t0 in cfg["sdedit_edit"]] + [("ddim_inversion", {"t0": t0})
                                                                  for t0 in cfg["ddim_edit"]]
    rows, shown = [], {"input": x[:10]}
    with torch.no_grad():
        for method, s in bench_progress(jobs, desc="cyclediffusion: class edit"):
            g = torch.Generator().manual_seed(0)
            if method == "cycle":
                out = cycle_diffusion(den, den, x, translation_grid(sched, cfg["steps"], t_start=s["t0"]), eta=s["eta"],
                                      source_cond=src, target_cond=tgt, generator=g)
            elif method == "sdedit":
                out = sdedit(den, x, translation_grid(sched, cfg["steps"], t_start=s["t0"], t_end=0.0), cond=tgt,
                             generator=g)
            else:
                out = ddim_inversion_translate(den, den, x, translation_grid(sched, cfg["steps"], t_start=s["t0"],
                                                                             t_end=0.0),
                                               source_cond=src, target_cond=tgt)
            rows.append(measure(out, method, **s))
            shown[f"{method} " + " ".join(f"{k}={v}" for k, v in s.items())] = out[:10]
    methods = ("cycle", "sdedit", "ddim_inversion")
    front = {m: {str(lv): frontier([r for r in rows if r["method"] == m], lv) for lv in LEVELS} for m in methods}
    return {"num_test": len(x), "table": rows, "frontier_ssim_at_target_acc": front}, shown


def _guidance(cfg: dict) -> tuple[dict, dict]:
    from .. import zoo

    den, clf = zoo.load("digits_unet"), _classifier()
    x, y = load_digits_split("test")
    x, y = x[:cfg["n_guide"]], y[:cfg["n_guide"]]
    b = (y + 1) % 10
    cond = {"class_labels": y}
    ts = translation_grid(den.schedule, 6, t_start=0.5)
    z = dpm_encode(den, x, ts, eta=0.5, cond=cond, generator=torch.Generator().manual_seed(0))
    result, shown = {}, {"input": x[:10]}
    for name, noise in (("gradient", 0.0), ("langevin", 1.0)):
        z_new, history = latent_energy_guidance(den, z, classifier_energy(clf, b), steps=cfg["guide_steps"],
                                                step_size=0.3, weight=10.0, noise_scale=noise, cond=cond,
                                                generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out = dpm_decode(den, z_new, cond=cond).clamp(-1, 1)
            pred = clf(out).argmax(1)
        result[name] = {"energy": history, "target_acc": float((pred == b).float().mean()),
                        "ssim_src": float(ssim(out, x).mean())}
        shown[name] = out[:10]
    with torch.no_grad():
        pred0 = clf(dpm_decode(den, z, cond=cond).clamp(-1, 1)).argmax(1)
    result["before"] = {"target_acc": float((pred0 == b).float().mean())}
    result["setting"] = {"t0": 0.5, "eta": 0.5, "grid_steps": 6, "step_size": 0.3, "weight": 10.0,
                         "langevin_steps": cfg["guide_steps"]}
    return result, shown


def _image_panel(ax, rows: dict, title: str) -> None:
    from ..plotting import image_grid

    names = list(rows)
    n = max(len(v) for v in rows.values())
    padded = [torch.cat([v, torch.full((n - len(v), *v.shape[1:]), -1.0)]) if len(v) < n else v for v in rows.values()]
    ax.imshow(image_grid(torch.cat(padded), n), cmap="gray", vmin=0, vmax=255)
    ax.set_yticks([(i + 0.5) * 9 + 0.5 for i in range(len(names))], names, fontsize=6)  # rows of 8 px + 1 px pad
    ax.set_xticks([])
    ax.set_title(title, fontsize=9)


def _scatter(ax, rows: list[dict], y_key: str, title: str) -> None:
    styles = {"cycle": ("o", "C0"), "sdedit": ("s", "C1"), "ddim_inversion": ("^", "C2")}
    for method, (marker, color) in styles.items():
        pts = [(r["target_acc"], r[y_key]) for r in rows if r["method"] == method]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, color=color, label=method)
    for r in rows:
        if r["method"] not in styles:
            ax.scatter([r["target_acc"]], [r[y_key]], marker="x", color="k")
            ax.annotate(r["method"], (r["target_acc"], r[y_key]), fontsize=6)
    ax.set_xlabel("target rate (judge)")
    ax.set_ylabel(y_key)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = QUICK if quick else FULL
    parts = bench_progress(["domain", "class edit", "guidance"], desc="cyclediffusion")
    results, shown = {}, {}
    for part in parts:
        if part == "domain":
            results["domain"], shown["domain"] = _domain(cfg, quick)
        elif part == "class edit":
            results["class_edit"], shown["class_edit"] = _class_edit(cfg)
        else:
            results["guidance"], shown["guidance"] = _guidance(cfg)
    fig, axes = plt.subplots(2, 3, figsize=(16, 10))
    _image_panel(axes[0, 0], shown["domain"], "digits -> thick digits (first 10 test digits)")
    _scatter(axes[0, 1], results["domain"]["table"], "ssim_ideal", "domain: SSIM to thick_digits(x)")
    _scatter(axes[0, 2], results["domain"]["table"], "class_kept", "domain: class kept (digits classifier)")
    _image_panel(axes[1, 0], shown["class_edit"], "class edit a -> a+1 (zoo digits_unet)")
    _scatter(axes[1, 1], results["class_edit"]["table"], "ssim_src", "class edit: SSIM to input vs target-class rate")
    _image_panel(axes[1, 2], shown["guidance"], "latent-energy guidance toward a+1 (decoded with class a)")
    fig.tight_layout()
    return {"config": cfg, **results, "summary": _summary(results)}, fig


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _summary(results: dict) -> str:
    dom = results["domain"]["table"]

    def best(method):
        rows = [r for r in dom if r["method"] == method]
        return max(rows, key=lambda r: r["ssim_ideal"]) if rows else None

    parts = []
    for m in ("cycle", "sdedit", "ddim_inversion"):
        r = best(m)
        if r is not None:
            parts.append(f"{m} thick {r['target_acc']:.2f} class {r['class_kept']:.2f} "
                         f"SSIM-ideal {r['ssim_ideal']:.3f}")
    front = results["class_edit"]["frontier_ssim_at_target_acc"]
    edit = "; ".join(f"{m} " + "/".join(_fmt(front[m][str(lv)]) for lv in LEVELS) for m in front)
    g = results["guidance"]
    rec = results["domain"]["reconstruction"]
    return (f"domain (best SSIM-ideal per method): {'; '.join(parts)} | same-model reconstruction: DPM-Encoder max err "
            f"{rec['cycle_max_abs_err']:.1e}, DDIM inversion mean err {rec['ddim_inversion_mean_abs_err']:.3f} | class "
            f"edit SSIM at target rate >= {'/'.join(map(str, LEVELS))}: {edit} | latent guidance target rate "
            f"{g['before']['target_acc']:.2f} -> {g['gradient']['target_acc']:.2f} (gradient), "
            f"{g['langevin']['target_acc']:.2f} (Langevin)")


register_bench("cyclediffusion", "CycleDiffusion / DPM-Encoder vs SDEdit and DDIM inversion: digits -> thick digits, "
                                 "zero-shot class edit, latent-energy guidance")(_run)
