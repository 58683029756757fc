"""Quantization of diffusion models (issue 9): naive min/max, PTQ4DM, Q-Diffusion, TFMQ-DM, EDA-DM and EfficientDM
at W8A8 / W4A8 / W4A4 on the shipped digits and patches UNets, plus real int8 kernels against fp32 side by side.

Fixed for every row: the method's calibration trajectories and every sample use deterministic DDIM (eta = 0) on
the uniform-t grid, 20 steps (``methods.quant.pipeline.CALIB_SAMPLER``); calibration draws 256 trajectories from
seed 0 (class labels 0..9 in turn for digits). Evaluation uses other seeds:

* ``digits_fd`` (digits_unet): Frechet distance of the zoo classifier's features between ``n_samples`` DDIM
  samples (500, quick: 100; labels 0..9 in turn, seeds 10000 + i) and the digits test split; ``class_accuracy``
  of the same samples. ``patch_swd`` (patches_unet): sliced Wasserstein distance (256 projections, seed 0) between the
  flattened samples and as many 16 x 16 test patches. Both are biased by the sample count: compare rows of one
  run only.
* ``eps_mse_vs_fp``: mean over the 20 steps of mean((eps_q(x_t, t) - eps_fp(x_t, t))^2), x_t from 64 (quick: 32)
  fp DDIM trajectories (seed 1); ``eps_mse_per_step`` lists the 20 values (noise to data).
* ``sample_rmse_vs_fp``: RMS difference between the quantized and the fp model's samples from the same noise.
* ``weight_bytes``: quantized weights at their bit width plus the floating-point rest (biases, norms,
  embeddings, unquantized layers) at 4 bytes; ``qparam_bytes``: the quantizers' (Delta, z).
* ``calib_seconds`` / ``finetune_seconds``: as the method reports them (trajectory recording excluded: shared).
  Every method runs with its ``quick`` budget (``METHOD_QUICK``, see there), in the full run too.

``int8_deploy``: a wider patches-style UNet (random init, seed 0, the zero-initialised output conv re-drawn with
PyTorch's default init so the net does not output 0; base_channels 256 (quick: 64), channel_mult (1, 2), one res
block per level, no attention, 32 x 32 grey; linear VP; its output read as an x0 prediction, which keeps a random
net's DDIM samples bounded - read as eps, x0_hat = (x - sigma eps_hat) / alpha reaches 1 / alpha_T ~ 160) is
quantized W8A8 by min/max on 4 of its own trajectories, exported to int8 CPU kernels
(``methods.quant.int8.export_int8``), and DDIM-sampled (20 uniform steps, batch 2) by fp32 and int8 in alternation;
the seconds are medians of the repeats. ``mean_abs_diff_vs_fakequant`` / ``..._fakequant_vs_fp32`` put the int8
kernels' deviation beside the quantization error itself (rounding flips from float summation order propagate
through the 20 steps of a random net, so these figures are loose); ``trained_model_check`` repeats the comparison on
each shipped model's W8A8 min/max row (int8 kernels vs fake-quant vs fp32 samples from the same noise).
``max_abs_diff_vs_fakequant`` compares the int8 samples with the fake-quant model's from the same noise.
"""

from __future__ import annotations

import statistics
import time

import torch

from ..core.grids import make_grid
from ..core.noise import generators_from_seeds, prior_sample
from ..methods.quant.pipeline import CALIB_SAMPLER, available_methods, calibration_trajectories, get_method
from . import bench_progress, register_bench

MODELS = ("digits_unet", "patches_unet")
BITS = ((8, 8), (4, 8), (4, 4))
QUICK_BITS = ((8, 8), (4, 8))
METHOD_ORDER = ("minmax", "ptq4dm", "qdiffusion", "tfmq", "edadm", "efficientdm")
#: the "best fast method" of --quick: the first of these that is available. PTQ4DM's released recipe has no
#: reconstruction (MSE-init + NDTC calibration), so it is the fast one: measured on digits_unet (quick, 256
#: trajectories) 12 s per bit width under load, eps-MSE at W4A8 2.23e-3 vs min/max 3.02e-3; Q-Diffusion's quick
#: BRECQ + activation stages take 190-200 s per bit width on the same shared machine.
QUICK_PREFERENCE = ("ptq4dm", "qdiffusion", "edadm", "tfmq", "efficientdm")
CALIB_N = 256
EPS_N = {"full": 64, "quick": 32}
SAMPLES = {"full": 500, "quick": 100}
DEPLOY = {"full": {"base_channels": 256, "repeats": 5}, "quick": {"base_channels": 64, "repeats": 3}}
DEPLOY_NET = {"name": "unet", "in_channels": 1, "channel_mult": [1, 2], "num_res_blocks": 1,
              "attention_resolutions": [], "image_size": 32}
DEPLOY_BATCH = 2
#: Each method runs with its ``quick`` reconstruction / fine-tuning budget in both bench modes: 36 method runs
#: must fit in 20 minutes on 2 cores, and Q-Diffusion's quick budget alone (50 iterations per block and stage)
#: took 190-200 s per bit width on digits_unet on the shared 2-core machine (its default, 300, is 6x that).
#: ``diffusekit quantize`` runs the default budgets.
METHOD_QUICK = True


def _ts(schedule):
    return make_grid(CALIB_SAMPLER["grid"], schedule, CALIB_SAMPLER["steps"], t_end=0.0)


def _cond(den, n: int) -> dict:
    return {} if den.num_classes is None else {"class_labels": torch.arange(n) % den.num_classes}


@torch.no_grad()
def _samples(den, x_T: torch.Tensor, cond: dict) -> torch.Tensor:
    from ..samplers import sample_ddim

    return sample_ddim(den, x_T.clone(), _ts(den.schedule), cond=cond)


@torch.no_grad()
def _eps_per_step(den, traj) -> list[torch.Tensor]:
    """eps_hat of ``den`` at every recorded (x_t, t) of ``traj``, step by step."""
    return [den.eps(traj.x[s], traj.t[s].expand(traj.num_samples), **traj.cond) for s in range(traj.num_steps)]


def _eps_mse(qden, eps_fp: list[torch.Tensor], traj) -> list[float]:
    return [float((q - f).pow(2).mean()) for q, f in zip(_eps_per_step(qden, traj), eps_fp)]


class _Quality:
    """The sample metric of one model: digits FD + class accuracy, or the patch sliced Wasserstein distance."""

    def __init__(self, model: str, n: int):
        from .. import zoo
        from ..data import load_dataset

        self.model = model
        if model == "digits_unet":
            self.clf = zoo.load("digits_classifier")
            self.ref = load_dataset("digits", "test").x
            self.key = "digits_fd"
        else:
            self.ref = load_dataset("patches", "test", n=n, seed=0).x
            self.key = "patch_swd"

    def __call__(self, x: torch.Tensor, labels) -> dict:
        from ..metrics import class_accuracy, digits_fd, sliced_wasserstein

        x = x.float().clamp(-1, 1)
        if not torch.isfinite(x).all():
            return {self.key: float("nan")}
        if self.key == "digits_fd":
            return {"digits_fd": digits_fd(x, self.ref, classifier=self.clf),
                    "class_accuracy": class_accuracy(x, labels, classifier=self.clf)}
        return {"patch_swd": sliced_wasserstein(x.flatten(1).double(), self.ref.flatten(1).double(),
                                                generator=torch.Generator().manual_seed(0))}


def _run_model(model: str, methods: list[str], bits, quick: bool) -> list[dict]:
    from .. import zoo
    from ..methods.quant.modules import weight_bytes
    from ..methods.quant.pipeline import sample_shape

    fp = zoo.load(model)
    shape = sample_shape(fp)
    n = SAMPLES["quick" if quick else "full"]
    quality = _Quality(model, n)
    traj = calibration_trajectories(fp, CALIB_N, seed=0)
    eval_traj = calibration_trajectories(fp, EPS_N["quick" if quick else "full"], seed=1)
    x_T = prior_sample(fp.schedule, (n, *shape), generators_from_seeds(10_000, n))
    cond = _cond(fp, n)
    labels = cond.get("class_labels")
    x_fp = _samples(fp, x_T, cond)
    eps_fp = _eps_per_step(fp, eval_traj)
    fp_state = {k: v.clone() for k, v in fp.net.state_dict().items()}
    wb = weight_bytes(fp.net)
    rows = [{"model": model, "method": "fp32", "wbits": 32, "abits": 32, **quality(x_fp, labels),
             "eps_mse_vs_fp": 0.0, "sample_rmse_vs_fp": 0.0, "weight_bytes": wb["fp32_bytes"], "qparam_bytes": 0.0,
             "calib_seconds": 0.0, "finetune_seconds": 0.0}]
    jobs = [(m, wbits, abits) for m in methods for wbits, abits in bits]
    for method, wbits, abits in bench_progress(jobs, desc=f"quant {model}"):
        row = {"model": model, "method": method, "wbits": wbits, "abits": abits}
        try:
            result = get_method(method)(fp, wbits, abits, traj=traj, seed=0, quick=METHOD_QUICK, progress=None)
        except Exception as err:  # one broken method must not lose a 20-minute run: the row says what failed
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            rows.append(row)
            continue
        if set(fp.net.state_dict()) != set(fp_state) or not all(
                torch.equal(v, fp_state[k]) for k, v in fp.net.state_dict().items()):
            raise RuntimeError(f"{method} changed the full-precision model it was given (the contract: a deep copy)")
        x_q = _samples(result.denoiser, x_T, cond)
        per_step = _eps_mse(result.denoiser, eps_fp, eval_traj)
        wq = weight_bytes(result.net)
        row.update(quality(x_q, labels))
        row.update({"eps_mse_vs_fp": sum(per_step) / len(per_step), "eps_mse_per_step": per_step,
                    "sample_rmse_vs_fp": float((x_q - x_fp).pow(2).mean().sqrt()),
                    "weight_bytes": wq["weight_bytes"], "qparam_bytes": wq["qparam_bytes"],
                    "calib_seconds": result.calib_seconds, "finetune_seconds": result.finetune_seconds})
        if method == "minmax" and (wbits, abits) == (8, 8):
            row["int8_kernels"] = _int8_vs_fake(result.denoiser, x_T, cond, x_q, x_fp)
        rows.append(row)
    return rows


def _int8_vs_fake(fake, x_T, cond, x_fake, x_fp) -> dict:
    """The trained model's W8A8 min/max samples on int8 kernels vs fake-quant, beside fake-quant vs fp32 (same
    noise, same 20 DDIM steps)."""
    import copy

    from ..core import NetworkDenoiser
    from ..methods.quant.int8 import export_int8

    real = NetworkDenoiser(export_int8(copy.deepcopy(fake.net)), fake.schedule, fake.prediction)
    x_real = _samples(real, x_T, cond)
    return {"max_abs_diff_vs_fakequant": float((x_real - x_fake).abs().max()),
            "mean_abs_diff_vs_fakequant": float((x_real - x_fake).abs().mean()),
            "max_abs_diff_fakequant_vs_fp32": float((x_fake - x_fp).abs().max()),
            "mean_abs_diff_fakequant_vs_fp32": float((x_fake - x_fp).abs().mean())}


@torch.no_grad()
def _int8_deploy(quick: bool) -> dict:
    """fp32 vs int8 kernels end to end (DDIM, 20 uniform steps) on a wide random-init UNet; see the module
    docstring."""
    import copy

    from ..core import NetworkDenoiser, VPDiscrete
    from ..methods.quant.int8 import export_int8, int8_weight_bytes
    from ..methods.quant.modules import weight_bytes
    from ..methods.quant.pipeline import quantize_minmax
    from ..nets import build_net

    cfg = DEPLOY["quick" if quick else "full"]
    torch.manual_seed(0)
    net = build_net({**DEPLOY_NET, "base_channels": cfg["base_channels"]}).eval()
    net.conv_out.reset_parameters()  # the UNet zero-initialises its output conv: an untrained net would output 0
    fp = NetworkDenoiser(net, VPDiscrete.named("linear", 1000), "x0")
    shape = (1, DEPLOY_NET["image_size"], DEPLOY_NET["image_size"])
    traj = calibration_trajectories(fp, 4, seed=0, shape=shape, num_classes=None)
    fake = quantize_minmax(fp, 8, 8, traj=traj, seed=0).denoiser
    real = NetworkDenoiser(export_int8(copy.deepcopy(fake.net)), fp.schedule, fp.prediction)
    x_T = prior_sample(fp.schedule, (DEPLOY_BATCH, *shape), generators_from_seeds(20_000, DEPLOY_BATCH))
    times = {"fp32": [], "int8": []}
    outs = {}
    for _ in bench_progress(range(cfg["repeats"]), desc="quant int8 deploy"):
        for name, den in (("fp32", fp), ("int8", real)):  # alternate, so background load hits both alike
            t0 = time.perf_counter()
            outs[name] = _samples(den, x_T, {})
            times[name].append(time.perf_counter() - t0)
    x_fake = _samples(fake, x_T, {})
    fp32_s, int8_s = statistics.median(times["fp32"]), statistics.median(times["int8"])
    return {"model": f"random-init UNet base_channels {cfg['base_channels']}, channel_mult (1, 2), 32x32 grey, "
                     "x0 prediction",
            "net": {**DEPLOY_NET, "base_channels": cfg["base_channels"]}, "batch": DEPLOY_BATCH,
            "sampler": dict(CALIB_SAMPLER), "repeats": cfg["repeats"], "threads": torch.get_num_threads(),
            "fp32_seconds": fp32_s, "int8_seconds": int8_s, "speedup": fp32_s / int8_s,
            "fp32_seconds_all": times["fp32"], "int8_seconds_all": times["int8"],
            "max_abs_diff_vs_fakequant": float((outs["int8"] - x_fake).abs().max()),
            "max_abs_diff_fakequant_vs_fp32": float((x_fake - outs["fp32"]).abs().max()),
            "mean_abs_diff_vs_fakequant": float((outs["int8"] - x_fake).abs().mean()),
            "mean_abs_diff_fakequant_vs_fp32": float((x_fake - outs["fp32"]).abs().mean()),
            "weight_bytes_ratio": int8_weight_bytes(real.net) / weight_bytes(fp.net)["fp32_bytes"]}


def _methods(quick: bool) -> tuple[list[str], list[str]]:
    have = available_methods()
    if quick:
        best = next((m for m in QUICK_PREFERENCE if m in have), None)
        chosen = ["minmax"] + ([best] if best else [])
    else:
        chosen = [m for m in METHOD_ORDER if m in have]
    return chosen, [m for m in METHOD_ORDER if m not in have]


def _bits_label(wbits: int, abits: int) -> str:
    return f"W{wbits}A{abits}"


def _plot(rows: list[dict], deploy: dict, models: list[str], methods: list[str], bits):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models) + 1, figsize=(5.2 * (len(models) + 1), 4.4))
    for ax, model in zip(axes, models):
        mrows = [r for r in rows if r["model"] == model]
        fp_row = next(r for r in mrows if r["method"] == "fp32")
        key = "digits_fd" if model == "digits_unet" else "patch_swd"
        width = 0.8 / max(1, len(methods))
        for j, method in enumerate(methods):
            vals = []
            for wbits, abits in bits:
                r = next((r for r in mrows if r["method"] == method and (r["wbits"], r["abits"]) == (wbits, abits)),
                         None)
                vals.append(float("nan") if r is None or key not in r else r[key])
            xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(bits))]
            bars = ax.bar(xs, vals, width, label=method)
            ax.bar_label(bars, [f"{v:.3g}" for v in vals], fontsize=6, rotation=90, padding=2)
        ax.axhline(fp_row[key], color="k", ls="--", lw=1, label=f"fp32 {fp_row[key]:.3g}")
        ax.set_xticks(range(len(bits)), [_bits_label(*b) for b in bits])
        ax.margins(y=0.15)
        ax.set_ylabel(("digits FD" if key == "digits_fd" else "patch sliced Wasserstein") + " (lower is better)")
        ax.set_title(f"{model}: DDIM 20 uniform steps", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3, which="both")
    ax = axes[-1]
    ax.bar([0, 1], [deploy["fp32_seconds"], deploy["int8_seconds"]], color=["tab:gray", "tab:green"])
    ax.set_xticks([0, 1], ["fp32", "int8 kernels"])
    ax.set_ylabel(f"seconds per DDIM-20 run (batch {deploy['batch']}, median of {deploy['repeats']})")
    ax.set_title(f"int8 deploy, base {deploy['net']['base_channels']} at 32x32: {deploy['speedup']:.2f}x faster, "
                 f"weights {deploy['weight_bytes_ratio']:.2f}x", fontsize=9)
    ax.text(1, 0.5 * deploy["int8_seconds"], f"{deploy['speedup']:.2f}x", ha="center", va="center", fontsize=11,
            color="white", weight="bold")
    fig.tight_layout()
    return fig


def _summary(rows: list[dict], deploy: dict) -> str:
    parts = []
    for r in rows:
        if r["method"] == "fp32":
            continue
        key = "digits_fd" if r["model"] == "digits_unet" else "patch_swd"
        what = r.get("error") or f"{key} {r.get(key, float('nan')):.3g} eps-mse {r['eps_mse_vs_fp']:.2e}"
        parts.append(f"{r['model'].split('_')[0]} {r['method']} {_bits_label(r['wbits'], r['abits'])}: {what}")
    fps = "; ".join(f"{r['model'].split('_')[0]} fp32 "
                    f"{r.get('digits_fd', r.get('patch_swd')):.3g}" for r in rows if r["method"] == "fp32")
    checks = "; ".join(f"{m.split('_')[0]} W8A8 samples mean |int8 - fake-quant| {c['mean_abs_diff_vs_fakequant']:.2g}"
                       f" vs |fake-quant - fp32| {c['mean_abs_diff_fakequant_vs_fp32']:.2g}"
                       for m, c in deploy.get("trained_model_check", {}).items())
    return (f"{fps}; " + "; ".join(parts) + f" | int8 deploy {deploy['speedup']:.2f}x faster than fp32 "
            f"(weights {deploy['weight_bytes_ratio']:.2f}x); {checks}")


def _run(quick: bool):
    models = ["digits_unet"] if quick else list(MODELS)
    bits = QUICK_BITS if quick else BITS
    methods, missing = _methods(quick)
    rows = []
    for model in bench_progress(models, desc="quant: models"):
        rows += _run_model(model, methods, bits, quick)
    deploy = _int8_deploy(quick)
    deploy["trained_model_check"] = {r["model"]: r["int8_kernels"] for r in rows if "int8_kernels" in r}
    fig = _plot(rows, deploy, models, methods, bits)
    return {"sampler": dict(CALIB_SAMPLER), "calib_trajectories": CALIB_N, "method_budget_quick": METHOD_QUICK,
            "num_samples": SAMPLES["quick" if quick else "full"],
            "eps_trajectories": EPS_N["quick" if quick else "full"],
            "methods": methods, "methods_not_available": missing, "rows": rows, "int8_deploy": deploy,
            "summary": _summary(rows, deploy)}, fig


register_bench("quant", "quantized diffusion models: min/max, PTQ4DM, Q-Diffusion, TFMQ-DM, EDA-DM, EfficientDM at "
                        "W8A8/W4A8/W4A4 on digits and patches; real int8 kernels vs fp32")(_run)
