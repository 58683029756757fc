"""PTQ4DM and Q-Diffusion as complete post-training quantization pipelines (issue 9), following the method
contract of ``pipeline`` (``quantize_<method>(denoiser, wbits, abits, *, traj, seed, quick, progress)``).

* ``quantize_ptq4dm`` - PTQ4DM (Shang et al., CVPR 2023, "Post-training Quantization on Diffusion Models",
  arXiv 2211.15736): NDTC calibration (``calibration.ptq4dm_calibration``: one sample per trajectory at
  t ~ N(0.4 T, (0.4 T)^2), true noise-level labels), asymmetric uniform quantizers, weights per output
  channel and activations per tensor, both initialised by the MSE range search in the L2.4 norm of the
  reference (QDrop's quantizer), first and last layers at 8 bits. The released DNTC script does not enable
  AdaRound, so by default no reconstruction runs (the headline recipe is "MSE-init PTQ + NDTC");
  ``brecq=True`` adds BRECQ + AdaRound weight reconstruction (``reconstruction.reconstruct_blocks``).
* ``quantize_qdiffusion`` - Q-Diffusion (Li et al., ICCV 2023, "Q-Diffusion: Quantizing Diffusion Models",
  arXiv 2302.04304): time-step-aware calibration (``calibration.qdiffusion_calibration``: the same
  trajectories at ``num_steps`` evenly spaced steps), split shortcut quantization of the decoder's skip
  concatenations (``calibration.split_concat_convs``), every Conv2d / Linear quantized (no 8-bit exception),
  weights per channel min/max then BRECQ + AdaRound with activations off (stage 1), activation ranges
  min/max on 64 random calibration samples (asymmetric grid by default, see below), the
  attention matmul inputs quantized too (``attention.quantize_attention``) where the net routes attention
  through ``ScaledDotProductAttention``, then a second block pass learning only the activation step sizes
  (stage 2: Adam lr 4e-4, cosine decay, L_2.4 loss, no rounding term).
* ``quantize_naive_brecq`` - an ablation: the naive min/max quantizer (as ``pipeline.quantize_minmax``)
  followed by the same BRECQ + AdaRound weight reconstruction on the same uniform-step calibration set, to
  separate what reconstruction buys from what Q-Diffusion's calibration and split add.

Budgets: the reference reconstructs 20k iterations per block (Q-Diffusion's activation stage 5k); here
``iters`` defaults to 300 (``quick``: 50) per block and stage on CPU. With so few steps the reference V
learning rate 1e-3 cannot move a rounding variable far enough to flip it (Adam moves each V by about lr per
step; h saturates at |V| ~ 2.4), so the pipelines use ``lr_v = 1e-2`` (measured on digits_unet, W4 weights
only, Q-Diffusion calibration, 200 iterations per block: relative x0 error 0.535 with nearest rounding,
0.747 at lr 1e-3, 0.519 at 1e-2, 0.630 at 3e-2; eps MSE 0.00214 -> 0.00145 at 1e-2).

Activation grid: the reference's CIFAR / LSUN scripts pass ``--a_sym`` (signed grid, z = 0). Measured on
digits_unet (64 trajectories, 10 steps, 100 iterations): at W4A8 the two grids are equal (x0 MSE 0.926
symmetric, 0.897 asymmetric; eps MSE 1.38e-3 both), at W4A4 the signed grid, which leaves 3 bits for the
mostly positive post-SiLU inputs, collapses (x0 MSE 2514 vs 107, eps 1.38 vs 0.077; min/max: 913, 0.44);
so ``act_symmetric`` defaults to False and True reproduces the reference's setting.

Measured on digits_unet (8x8, 756k parameters): 64 calibration trajectories of the fixed DDIM-20 sampler,
errors of x0_hat / eps_hat against the fp model on 64 fresh DDIM-20 trajectories, MSE averaged over the 20
steps (x0 MSE is dominated by the noisiest steps, where x0_hat = (x - sigma eps_hat) / alpha amplifies the
eps error by 1/alpha ~ 156); Q-Diffusion with 10 calibration steps x 64 and 100 iterations per block and
stage (about 20 s of one CPU core), PTQ4DM without reconstruction (3 s):

    method         W8A8 x0 / eps        W4A8 x0 / eps        W4A4 x0 / eps
    min/max        0.693 / 5.7e-4       2.32 / 2.72e-3       913 / 0.440
    PTQ4DM         0.607 / 5.1e-4       1.03 / 2.12e-3       68.5 / 0.062
    Q-Diffusion    0.279 / 3.2e-4       0.897 / 1.39e-3      107 / 0.077

At W4A8 BRECQ + AdaRound (100 iterations) on top of PTQ4DM gives 0.831 / 1.14e-3, on top of naive min/max
(``quantize_naive_brecq``) 2.33 / 2.11e-3: reconstruction lowers the eps error everywhere but the x0 error
at the noisiest steps only together with better ranges (PTQ4DM's MSE ranges, 8-bit first/last layers, or
Q-Diffusion's learned activation steps). PTQ4DM's 8-bit first and last layers are what keep it ahead at
W4A4. Q-Diffusion at W4A8 with ``quick`` (all 20 steps x 64, 50 iterations): 1.55 / 1.37e-3, 19 s of CPU;
with the defaults (20 steps x 64, 300 iterations): 2.09 / 1.44e-3, 45 s. The eps error and the x0 error
of the five least-noisy steps (6.9e-4 vs 1.48e-3 for min/max) hold steady, but the step-averaged x0 error,
set by the eps error at t = T times 1/alpha_T^2 ~ 24,000, moves by 2x between budgets: rank methods on it
only with a margin.

``calib_seconds`` covers building the calibration set and initialising the ranges; ``finetune_seconds``
covers the reconstruction stages (``time.perf_counter``). The recorded trajectories come in ready-made.

Every returned net has the standard structure (``info["structure"]``): ``split_concat_convs`` (Q-Diffusion
only), ``quantize_model``, ``quantize_attention`` (Q-Diffusion, when the net has attention), with the
learned rounding baked into each layer's float weight (on its quantizer's grid) and every learned step size
kept in its ``UniformQuantizer``.
"""

from __future__ import annotations

import copy
import time

import torch

from ...core.denoiser import NetworkDenoiser
from .calibration import (CalibrationSet, Trajectories, ptq4dm_calibration, qdiffusion_calibration,
                          split_concat_convs, uniform_calibration)
from .modules import calibrate, quant_layers, quantize_model, set_act_mode
from .pipeline import QuantDenoiser, QuantResult, open_bar
from .reconstruction import reconstruct_blocks

__all__ = ["quantize_ptq4dm", "quantize_qdiffusion", "quantize_naive_brecq", "DEFAULT_ITERS", "QUICK_ITERS",
           "RECON_LR_V"]

DEFAULT_ITERS = 300
QUICK_ITERS = 50
RECON_LR_V = 1e-2
_BATCH = 256


def _check(denoiser, wbits, abits, traj):
    if not isinstance(denoiser, NetworkDenoiser):
        raise ValueError(f"quantization needs a NetworkDenoiser (a network to quantize); got {type(denoiser).__name__}")
    if not isinstance(traj, Trajectories):
        raise ValueError("traj must be calibration.Trajectories recorded from the full-precision model")
    for name, b in (("wbits", wbits), ("abits", abits)):
        if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 16:
            raise ValueError(f"{name} must be an integer in 2..16; got {b!r}")


def _runner(qden: NetworkDenoiser, calib: CalibrationSet, batch_size: int = _BATCH):
    """run_batches for ``reconstruct_blocks`` / ``calibrate``: the net sees what it sees while sampling."""

    def run_batches():
        for x, t, cond in calib.batches(batch_size):
            yield lambda net, x=x, t=t, cond=cond: net(*qden.net_inputs(x, t), **cond)

    return run_batches


def _calibrate(net, calib: CalibrationSet, qden, method: str, **range_kw) -> None:
    calibrate(net, _runner(qden, calib), method, run=lambda model, item: item(model), **range_kw)


def _budget(iters: int | None, quick: bool) -> int:
    if iters is None:
        return QUICK_ITERS if quick else DEFAULT_ITERS
    if iters < 1:
        raise ValueError(f"iters must be >= 1; got {iters}")
    return int(iters)


def _summary(stats: dict) -> dict:
    """JSON-ready per-block (mse_before, mse_after) of a reconstruction."""
    return {name: {"mse_before": float(s["mse_before"]), "mse_after": float(s["mse_after"])}
            for name, s in stats.items()}


def _calib_info(calib: CalibrationSet, how: str) -> dict:
    q = torch.quantile(calib.t, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)).tolist()
    return {"method": calib.method, "description": how, "samples": len(calib),
            "distinct_times": int(torch.unique(calib.t).numel()),
            "t_quantiles": {"min": q[0], "q25": q[1], "median": q[2], "q75": q[3], "max": q[4]}}


def quantize_ptq4dm(denoiser: NetworkDenoiser, wbits: int, abits: int, *, traj: Trajectories, seed: int = 0,
                    quick: bool = False, progress=None, n_calib: int | None = None, mu: float = 0.4,
                    sigma: float = 0.4, brecq: bool = False, iters: int | None = None,
                    lr_v: float = RECON_LR_V) -> QuantResult:
    """PTQ4DM (Shang et al. 2023, arXiv 2211.15736): NDTC calibration + MSE-initialised uniform quantizers.

    Calibration: for each of ``n_calib`` trajectories (default all) the recorded x_t nearest to
    t_i ~ N(mu T, (sigma T)^2), clamped to the recorded range, labelled with its true time (Sec. 4.2, NDTC).
    Quantizers: Q(x) = Delta (clamp(round(x / Delta) + z, 0, 2^b - 1) - z), asymmetric; weights per output
    channel, activations per tensor; each range r [min, max] with r minimising sum |x - Q(x)|^2.4 (the
    reference QDrop quantizer's MSE init); the first and last quantizable layers at 8 bits (weights and
    input activations) when ``wbits`` or ``abits`` is below 8. ``brecq``: BRECQ + AdaRound reconstruction of
    the weights (activations off while it runs) with ``iters`` steps per block (reference: off).
    """
    _check(denoiser, wbits, abits, traj)
    n_iters = _budget(iters, quick)
    t0 = time.perf_counter()
    net = copy.deepcopy(denoiser.net).eval()
    qkw = {"weight_method": "mse"}
    if min(wbits, abits) < 8:
        qkw["first_last_bits"] = 8
    quantize_model(net, wbits, abits, **qkw)
    for w in quant_layers(net).values():  # the reference's L2.4 norm (quantize_model searches in L2)
        if w.w_quant is not None:
            w.w_quant.init_range(w.layer.weight, "mse", p=2.4)
    qden = QuantDenoiser(net, denoiser)
    calib = ptq4dm_calibration(traj, n_calib, mu=mu, sigma=sigma, seed=seed)
    _calibrate(net, calib, qden, "mse", p=2.4)
    calib_seconds = time.perf_counter() - t0

    info = {"calibration": _calib_info(calib, f"NDTC: t ~ N({mu} T, ({sigma} T)^2) on fp DDIM trajectories, "
                                              "MSE (L2.4) ranges"),
            "structure": {"split": [], "quantize_model": dict(qkw), "attention": None, "temporal_cache": False}}
    t1 = time.perf_counter()
    if brecq:
        set_act_mode(net, "off")
        try:
            stats = reconstruct_blocks(net, denoiser.net, _runner(qden, calib), iters=n_iters, lr_v=lr_v,
                                       seed=seed, progress=progress)
        finally:
            set_act_mode(net, "quant")
        info["reconstruction"] = {"iters": n_iters, "blocks": _summary(stats)}
    return QuantResult(qden, "ptq4dm", wbits, abits, calib_seconds=calib_seconds,
                       finetune_seconds=time.perf_counter() - t1 if brecq else 0.0, info=info)


def _split_if_unet(net, split: bool) -> list[str]:
    """Q-Diffusion's split shortcut on our UNet's decoder concatenations; [] for other networks."""
    from ...nets.unet import UNet

    if not split or not isinstance(net, UNet):
        return []
    try:
        split_concat_convs(net, ["skip"])
    except ValueError:  # no decoder conv on a concatenation (identity shortcuts everywhere)
        return []
    return ["skip"]


def _has_attention(net) -> bool:
    from ...nets.unet import ScaledDotProductAttention

    return any(type(m) is ScaledDotProductAttention for m in net.modules())


def quantize_qdiffusion(denoiser: NetworkDenoiser, wbits: int, abits: int, *, traj: Trajectories, seed: int = 0,
                        quick: bool = False, progress=None, num_steps: int = 20, per_step: int | None = None,
                        split: bool = True, attention: bool = True, act_symmetric: bool = False,
                        iters: int | None = None, act_iters: int | None = None, lr_v: float = RECON_LR_V,
                        lr_act: float = 4e-4, act_init_samples: int = 64) -> QuantResult:
    """Q-Diffusion (Li et al. 2023, arXiv 2302.04304): time-step-aware calibration, split shortcut,
    BRECQ + AdaRound weights, then learned activation steps.

    1. Calibration set: ``num_steps`` steps evenly spaced over the recorded trajectories (first and last
       included) x ``per_step`` trajectories (default all) (Sec. 4.2).
    2. Structure: ``split_concat_convs(net, ["skip"])`` (Sec. 4.3, our UNet only), ``quantize_model`` with
       per-channel min/max weights and per-tensor activations (``act_symmetric``: the reference's signed grid;
       default the unsigned one, see the module docstring), every Conv2d / Linear at
       (wbits, abits); ``quantize_attention`` on q, k, v and the softmax output when ``attention`` and the net
       has ``ScaledDotProductAttention``.
    3. Stage 1: activations off, BRECQ + AdaRound of the weights, ``iters`` steps per block
       (``reconstruction.reconstruct_blocks``; loss ||B_fp(x_fp) - B_q(x_q)||^2 + 0.01 f_reg).
    4. Activation ranges: min/max over ``act_init_samples`` random calibration samples.
    5. Stage 2: activations on, only their step sizes learned, ``act_iters`` steps per block (default
       ``iters``), Adam ``lr_act`` with cosine decay, L_2.4 loss.
    """
    _check(denoiser, wbits, abits, traj)
    n_iters = _budget(iters, quick)
    n_act = n_iters if act_iters is None else _budget(act_iters, quick)
    t0 = time.perf_counter()
    calib = qdiffusion_calibration(traj, num_steps=min(num_steps, traj.num_steps), per_step=per_step, seed=seed)
    net = copy.deepcopy(denoiser.net).eval()
    split_layers = _split_if_unet(net, split)
    qkw = {"act_symmetric": bool(act_symmetric)}
    quantize_model(net, wbits, abits, **qkw)
    akw = None
    if attention and _has_attention(net):
        from .attention import quantize_attention

        akw = {"act_symmetric": bool(act_symmetric)}
        quantize_attention(net, abits, **akw)
    qden = QuantDenoiser(net, denoiser)
    calib_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    set_act_mode(net, "off")
    w_stats = reconstruct_blocks(net, denoiser.net, _runner(qden, calib), iters=n_iters, lr_v=lr_v, seed=seed,
                                 progress=progress)
    set_act_mode(net, "quant")
    finetune_seconds = time.perf_counter() - t1

    t2 = time.perf_counter()
    k = min(act_init_samples, len(calib))
    idx = torch.randperm(len(calib), generator=torch.Generator().manual_seed(seed + 1))[:k]
    init_set = CalibrationSet(calib.x[idx], calib.t[idx], {c: v[idx] for c, v in calib.cond.items()}, calib.method)
    bar = open_bar(progress, f"calibrate activations W{wbits}A{abits}", 1)
    _calibrate(net, init_set, qden, "minmax")
    bar.update(1)
    bar.close()
    calib_seconds += time.perf_counter() - t2

    t3 = time.perf_counter()
    a_stats = reconstruct_blocks(net, denoiser.net, _runner(qden, calib), iters=n_act, adaround=False,
                                 learn_act=True, p=2.4, lr_act=lr_act, seed=seed + 7, progress=progress)
    finetune_seconds += time.perf_counter() - t3
    info = {"calibration": _calib_info(calib, f"time-step-aware: {len(calib) // max(1, calib.t.unique().numel())} "
                                              f"trajectories at each of {calib.t.unique().numel()} evenly spaced "
                                              "fp DDIM steps; activations min/max on "
                                              f"{k} random samples, then learned"),
            "structure": {"split": split_layers, "quantize_model": dict(qkw), "attention": akw,
                          "temporal_cache": False},
            "reconstruction": {"iters": n_iters, "act_iters": n_act, "weights": _summary(w_stats),
                               "activations": _summary(a_stats)}}
    return QuantResult(qden, "qdiffusion", wbits, abits, calib_seconds=calib_seconds,
                       finetune_seconds=finetune_seconds, info=info)


def quantize_naive_brecq(denoiser: NetworkDenoiser, wbits: int, abits: int, *, traj: Trajectories, seed: int = 0,
                         quick: bool = False, progress=None, iters: int | None = None,
                         lr_v: float = RECON_LR_V) -> QuantResult:
    """Ablation: naive min/max PTQ (``pipeline.quantize_minmax``: every layer, asymmetric, min/max ranges on one
    uniformly random step per trajectory) + BRECQ/AdaRound weight reconstruction (Li et al. 2021,
    arXiv 2102.05426; Nagel et al. 2020, arXiv 2004.10568) on the same calibration set, activations off while
    reconstructing. Isolates the effect of reconstruction from Q-Diffusion's calibration set and split."""
    _check(denoiser, wbits, abits, traj)
    n_iters = _budget(iters, quick)
    t0 = time.perf_counter()
    net = copy.deepcopy(denoiser.net).eval()
    quantize_model(net, wbits, abits)
    qden = QuantDenoiser(net, denoiser)
    calib = uniform_calibration(traj, seed=seed)
    _calibrate(net, calib, qden, "minmax")
    calib_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    set_act_mode(net, "off")
    try:
        stats = reconstruct_blocks(net, denoiser.net, _runner(qden, calib), iters=n_iters, lr_v=lr_v, seed=seed,
                                   progress=progress)
    finally:
        set_act_mode(net, "quant")
    info = {"calibration": _calib_info(calib, "uniform random step of each fp DDIM trajectory, min/max"),
            "structure": {"split": [], "quantize_model": {}, "attention": None, "temporal_cache": False},
            "reconstruction": {"iters": n_iters, "blocks": _summary(stats)}}
    return QuantResult(qden, "naive_brecq", wbits, abits, calib_seconds=calib_seconds,
                       finetune_seconds=time.perf_counter() - t1, info=info)
