"""EDA-DM (Liu et al. 2024, arXiv 2401.04585): post-training quantization of diffusion models by enhanced
distribution alignment, at the calibration level (TDAC) and the reconstruction level (FBR).

TDAC (temporal distribution alignment calibration, paper Sec. 3.2). The full-precision model's own DDIM
trajectories are run and an intermediate feature F_t (the input of the middle block's attention, recorded by a
forward hook) is kept at every sampling step t, for the same N trajectories. Per step:

    density    d_t = #{s != t : mean((F_t - F_s)^2) <= r}                          (r = 3.0)
    diversity  c_t = sum_{s != t} sum_batch (1 - cos_channel(F_t, F_s))

(cos_channel: cosine similarity over the channel axis of the same trajectory's features, averaged over
spatial positions). Both are min-max normalised over the steps, w_t = d^_t + lambda c^_t (lambda = 1.2), and
the calibration budget N_cal is split as n_t = round(N_cal w_t / sum w) (largest-remainder rounding, so the
n_t sum to N_cal). A shuffled list holding step t n_t times assigns one step to each trajectory slot, and the
calibration sample of slot i is trajectory i's state at its step. Steps whose features are typical of many
other steps (dense) and steps whose features differ most from the others (diverse) get more samples.

FBR (fine-grained block reconstruction, Sec. 3.3). BRECQ block reconstruction whose loss adds the outputs of
the block's inner layers,

    L = ||B_q(x~) - B_fp(x)||^2 + eta sum_{l in B, l not last} ||l_q - l_fp||^2,     eta = 0.8,

with AdaRound on the weights (no rounding regulariser in the reference) and the activation step sizes learned
jointly; the shared ``reconstruction.reconstruct_blocks`` implements it through ``layer_loss_weight``.
Quantizers (per the reference): weights per channel, activations per tensor with one set for all steps,
Q-Diffusion's split shortcut, first and last layers at 8 bits, output not quantized.

Measured on the shipped digits UNet (as in ``tfmq``: 256 calibration trajectories of DDIM-20, relative x0
error over the 20 steps of 64 fresh trajectories, eps MSE, 1 thread on a shared CPU, one seed):

    W4A8  naive min/max 0.675 (eps MSE 2.9e-3) | EDA-DM quick (40 iterations per block) 0.244 (6.8e-4), 31 s |
          150 iterations 0.241 (6.4e-4), 38 s | quick ablations: uniform-step calibration instead of TDAC 0.253,
          eta = 0 (pure block loss) 0.242
    W4A4  naive min/max 12.4 (0.47) | EDA-DM quick 3.04 (0.062), 23 s | 150 iterations 2.87 (0.056), 25 s
    TDAC  on the middle attention's input (r = 3.0 suits these features: mean squared distances between steps
          0.01-9.4) the 256 samples go 11-16 per step, near uniform (12.8): the least noisy steps are the most
          diverse, the middle steps the densest.

So at this scale TDAC and the per-layer term are within seed noise of their ablations; the gain over min/max
comes from the 8-bit end layers and the reconstruction.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from ...core.denoiser import NetworkDenoiser
from .calibration import CalibrationSet, Trajectories, calibrate_denoiser
from .modules import quantize_model, set_act_mode
from .pipeline import QuantDenoiser, QuantResult
from .tfmq import _split_if_unet

__all__ = ["tdac_scores", "tdac_allocation", "tdac_calibration", "trajectory_features", "feature_module",
           "quantize_edadm"]


def feature_module(net: nn.Module, name: str | None = None) -> str:
    """The module whose input TDAC records: ``name`` when given, else our UNet's middle attention ``mid_attn``,
    else the first module whose name starts with "mid" (a foreign net should name one)."""
    names = dict(net.named_modules())
    if name is not None:
        if name not in names:
            raise ValueError(f"feature module {name!r} is not a module of {type(net).__name__}")
        return name
    if names.get("mid_attn") is not None:
        return "mid_attn"
    mids = [n for n in names if n.startswith("mid")]
    if not mids:
        raise ValueError(f"{type(net).__name__} has no middle block (mid_attn / mid*); name the TDAC feature module")
    return mids[0]


@torch.no_grad()
def trajectory_features(denoiser: NetworkDenoiser, traj: Trajectories, module: str | None = None, *,
                        batch_size: int = 256) -> torch.Tensor:
    """F (S, N, ...): the input of ``module`` (see ``feature_module``) when the full-precision net evaluates each
    recorded trajectory state, i.e. what a forward hook on the mid-block attention records while the sampler
    runs (the recorded x_t are exactly the sampler's network inputs)."""
    net = denoiser.net
    name = feature_module(net, module)
    got: list[torch.Tensor] = []
    handle = net.get_submodule(name).register_forward_pre_hook(lambda _m, args: got.append(args[0].detach().float()))
    try:
        out = []
        for k in range(traj.num_steps):
            rows = []
            for i in range(0, traj.num_samples, batch_size):
                got.clear()
                sl = slice(i, i + batch_size)
                x = traj.x[k, sl].to(torch.float64)
                t = traj.t[k].expand(x.shape[0])
                denoiser.raw(x, t, **{c: v[sl] for c, v in traj.cond.items()})
                if len(got) != 1:
                    raise ValueError(f"feature module {name!r} ran {len(got)} times in one call; choose a module "
                                     "called once per forward")
                rows.append(got[0])
            out.append(torch.cat(rows))
    finally:
        handle.remove()
    return torch.stack(out)


def _minmax_normalise(v: torch.Tensor) -> torch.Tensor:
    span = v.max() - v.min()
    return torch.zeros_like(v) if span <= 0 else (v - v.min()) / span


def tdac_scores(features: torch.Tensor, *, r: float = 3.0, lam: float = 1.2) -> dict[str, torch.Tensor]:
    """TDAC's per-step scores from F (S, N, C, ...) (the same N trajectories at every step):
    density d_t = #{s != t : mean((F_t - F_s)^2) <= r}, diversity c_t = sum_{s != t} sum_n (1 - cos_C(F_t, F_s)),
    weight w_t = minmax(d)_t + lam minmax(c)_t. Returns {"density", "diversity", "weight", "distance"} with
    distance the (S, S) matrix of mean((F_t - F_s)^2)."""
    if features.dim() < 3:
        raise ValueError(f"features must be (S, N, C, ...); got shape {tuple(features.shape)}")
    if r <= 0 or lam < 0:
        raise ValueError(f"need r > 0 and lam >= 0; got r={r}, lam={lam}")
    f = features.to(torch.float64)
    s = f.shape[0]
    flat = f.reshape(s, -1)
    sq = flat.pow(2).sum(1)
    distance = ((sq[:, None] + sq[None, :] - 2 * flat @ flat.T) / flat.shape[1]).clamp_min(0)
    off = ~torch.eye(s, dtype=torch.bool)
    density = ((distance <= r) & off).sum(1).to(torch.float64)
    unit = torch.nn.functional.normalize(f, dim=2)  # unit vectors over channels, (S, N, C, ...)
    # cos_C(F_t, F_s) per trajectory and position, averaged over positions, summed over trajectories;
    # one t at a time so memory stays at the size of F
    dissimilarity = torch.stack([
        (1 - (unit[t:t + 1] * unit).sum(2).reshape(s, f.shape[1], -1).mean(-1)).sum(-1) for t in range(s)])
    diversity = (dissimilarity * off).sum(1)
    weight = _minmax_normalise(density) + lam * _minmax_normalise(diversity)
    return {"density": density, "diversity": diversity, "weight": weight, "distance": distance}


def tdac_allocation(weight: torch.Tensor, n: int) -> torch.Tensor:
    """n_t = round(n w_t / sum w), with largest-remainder rounding so that sum_t n_t = n exactly. (S,) long."""
    if n < 1:
        raise ValueError(f"the calibration budget n must be >= 1; got {n}")
    w = weight.to(torch.float64).clamp_min(0)
    if float(w.sum()) <= 0:
        w = torch.ones_like(w)  # every score equal: no step is preferred
    share = n * w / w.sum()
    counts = share.floor().long()
    rest = n - int(counts.sum())
    if rest > 0:
        counts[torch.argsort(share - counts, descending=True)[:rest]] += 1
    return counts


def tdac_calibration(traj: Trajectories, features: torch.Tensor, n: int, *, r: float = 3.0, lam: float = 1.2,
                     seed: int = 0) -> CalibrationSet:
    """EDA-DM's TDAC calibration set of ``n`` samples from ``traj`` and its per-step features F (S, N, ...)
    (``trajectory_features``): budget n_t per step from ``tdac_scores`` / ``tdac_allocation``, then a shuffled
    list holding step t n_t times assigns one step to each of the first n trajectories (seeded by ``seed``).
    The set's ``method`` is "tdac"."""
    if features.shape[0] != traj.num_steps or features.shape[1] != traj.num_samples:
        raise ValueError(f"features must be (S={traj.num_steps}, N={traj.num_samples}, ...) like the trajectories; "
                         f"got {tuple(features.shape[:2])}")
    if not 1 <= n <= traj.num_samples:
        raise ValueError(f"n must be in 1..{traj.num_samples} (one sample per trajectory); got {n}")
    counts = tdac_allocation(tdac_scores(features, r=r, lam=lam)["weight"], n)
    steps = torch.repeat_interleave(torch.arange(traj.num_steps), counts)
    g = torch.Generator().manual_seed(int(seed))
    steps = steps[torch.randperm(n, generator=g)]
    return traj.take(steps, torch.arange(n), "tdac")


def _reference_lrs(wbits: int, abits: int) -> tuple[float, float]:
    """EDA-DM's released learning rates (AdaRound V, activation steps): 0.5 / 5e-4 at W4A8, 0.05 / 1e-3 at
    W8A8; other widths take the setting of the nearer weight width."""
    return (0.05, 1e-3) if wbits >= 8 else (0.5, 5e-4)


def quantize_edadm(denoiser: NetworkDenoiser, wbits: int, abits: int, *, traj: Trajectories, seed: int = 0,
                   quick: bool = False, progress=None, n_calib: int | None = None, feature: str | None = None,
                   r: float = 3.0, lam: float = 1.2, eta: float = 0.8, iters: int | None = None,
                   lr_v: float | None = None, lr_act: float | None = None, qdrop_prob: float = 0.5,
                   weight_method: str = "minmax", use_tdac: bool = True,
                   features: torch.Tensor | None = None) -> QuantResult:
    """EDA-DM (Liu et al. 2024, arXiv 2401.04585) post-training quantization; the method contract of ``pipeline``.

    1. TDAC (``tdac_calibration``): ``n_calib`` (default: all N trajectories) calibration samples allocated
       over the sampling steps by density and diversity of the full-precision mid-block features
       (``trajectory_features`` on ``feature``, default the middle attention's input; r, lam as in the paper).
    2. Structure (the reference's): Q-Diffusion's split shortcut (our UNet), ``quantize_model(net, wbits, abits,
       first_last_bits=8, weight_method=weight_method)``: weights per channel, activations per tensor with ONE
       set for every step, first and last layers at 8 bits, layer outputs in float.
    3. Activation ranges: min/max on the TDAC set.
    4. FBR: ``reconstruction.reconstruct_blocks`` with AdaRound (no rounding regulariser, as the reference) and
       learned activation steps jointly, the per-layer term with weight ``eta`` (0.8) over every layer of the
       block but the last, and QDrop input mixing (``qdrop_prob`` 0.5):
       L = ||B_q(x~) - B_fp(x)||^2 + eta sum_{l != last} ||l_q - l_fp||^2.
       Learning rates default to the reference's (``_reference_lrs``); ``iters`` per block: 40 with
       ``quick``, else 400 (the reference: 5000, batch 32).

    ``features``: precomputed ``trajectory_features(denoiser, traj, feature)`` (computed here when None).
    ``use_tdac=False`` is the ablation with one uniformly random step per trajectory (same budget).
    ``weight_method`` "minmax" by default (see ``tfmq.quantize_tfmq`` for the measurement). Returns a
    ``QuantResult`` (no ``step_times``: one activation set) with ``info`` holding the structure, the TDAC
    scores and allocation and the FBR statistics.
    """
    from .calibration import uniform_calibration
    from .reconstruction import reconstruct_blocks

    t0 = time.perf_counter()
    n = traj.num_samples if n_calib is None else int(n_calib)
    iters = (40 if quick else 400) if iters is None else int(iters)
    ref_v, ref_a = _reference_lrs(wbits, abits)
    lr_v = ref_v if lr_v is None else float(lr_v)
    lr_act = ref_a if lr_act is None else float(lr_act)
    fp_net = denoiser.net.eval()
    tdac = None
    if use_tdac:
        if features is None:
            features = trajectory_features(denoiser, traj, feature)
        scores = tdac_scores(features, r=r, lam=lam)
        calib = tdac_calibration(traj, features, n, r=r, lam=lam, seed=seed)
        tdac = {"density": scores["density"].tolist(), "diversity": scores["diversity"].tolist(),
                "weight": scores["weight"].tolist(),
                "allocation": tdac_allocation(scores["weight"], n).tolist()}
    else:
        calib = uniform_calibration(traj, n, seed=seed)

    net = copy.deepcopy(fp_net).eval()
    split = _split_if_unet(net)
    qkw = {"first_last_bits": 8, "weight_method": weight_method}
    quantize_model(net, wbits, abits, **qkw)
    qden = QuantDenoiser(net, denoiser)
    calibrate_denoiser(qden, calib, "minmax")
    set_act_mode(net, "quant")
    calib_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()

    def run_batches():
        return [lambda m, b=b: m(*qden.net_inputs(b[0], b[1]), **b[2]) for b in calib.batches(64)]

    stats = reconstruct_blocks(net, fp_net, run_batches, iters=iters, adaround=True, learn_act=True,
                               layer_loss_weight=eta, layer_loss_exclude_last=True, qdrop_prob=qdrop_prob,
                               reg_weight=0.0, lr_v=lr_v, lr_act=lr_act, seed=seed, progress=progress)
    finetune_seconds = time.perf_counter() - t1
    info = {"structure": {"split": split, "quantize_model": dict(qkw), "attention": None, "temporal_cache": False},
            "calibration": (f"{'TDAC' if use_tdac else 'uniform random step'}: {n} samples from {traj.num_samples} "
                            f"fp DDIM trajectories, one activation set, min/max"),
            "tdac": tdac,
            "fbr": {b: {k: v for k, v in st.items() if k != "layers"} for b, st in stats.items()},
            "settings": {"eta": eta, "iters": iters, "lr_v": lr_v, "lr_act": lr_act, "qdrop_prob": qdrop_prob}}
    return QuantResult(qden, "edadm", wbits, abits, calib_seconds=calib_seconds, finetune_seconds=finetune_seconds,
                       info=info)
