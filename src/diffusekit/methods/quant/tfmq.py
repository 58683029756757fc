"""TFMQ-DM (Huang et al., CVPR 2024, arXiv 2311.16503) and its extension "Temporal Feature Matters"
(Huang et al. 2024, arXiv 2407.19547): quantization that protects the *temporal features* of a diffusion
network.

Temporal information block (TIB). Some modules of a denoiser see only the time t (and the class label y):
for our UNet the time-embedding MLP ``embed`` (sinusoidal(t) -> Linear -> SiLU -> Linear, + E[y]) and every
ResBlock's embedding projection ``emb_proj`` (Linear on SiLU(emb)). Their outputs emb_{t,i} take only as
many values as there are (t, y) pairs the sampler visits. ``find_temporal_modules`` finds them on any
network by tracing: it runs the net twice on the same (t, y) with two different inputs x and keeps the
modules with parameters whose output is bit-identical in both runs (they cannot depend on x), reporting
the outermost ones. A foreign net can name them instead (``temporal_modules=``).

* TIAR (temporal-information-aware reconstruction): the TIB is reconstructed on its own,
  with AdaRound on the weights of its layers only and the loss on all its outputs over the finite set of
  sampling times (and every class row),

      L = sum_i mean ||emb^q_{t,i} - emb^fp_{t,i}||^2 + lambda sum_w (1 - |2 h(V_w) - 1|^beta),

  so no temporal-feature error leaks into the reconstruction targets of the other blocks, which are then
  reconstructed by the usual BRECQ pass (``reconstruction.reconstruct_blocks``) with the TIB excluded.
* FSC (finite-set calibration): t takes only the S values of the sampling grid, so every
  activation quantizer holds one (Delta, z) per sampling step (``quantize_model(act_steps=S)``), each
  calibrated on that step's trajectory samples only; ``QuantDenoiser(step_times=...)`` selects the set of
  the step nearest each call's t. (The released code calibrates every activation quantizer this way, not
  only the TIB's; so do we.)
* Temporal feature cache (extension, arXiv 2407.19547): since emb_{t,i} depends only on (t, y), it is
  computed once per sampling step and class row and looked up at inference (``enable_temporal_cache``):
  the TIB's modules do not run at the cached times. Two cache contents: "tib", the quantized TIB's own
  outputs after TIAR + FSC (lookup identical to recomputation), and "fp", the full-precision features
  quantized at the activation bit width with one range per step, Q_a(emb^fp_{t,i}). The disturbance-aware
  choice ("auto") keeps the variant whose temporal features are closer to full precision,
  argmin_v sum_{t,i} ||emb^v_{t,i} - emb^fp_{t,i}||^2 / ||emb^fp_{t,i}||^2.

Saving a cached net: the tables travel in its ``state_dict`` (``<module>.temporal_cache`` (S, K, *out) per
temporal module and ``temporal_cache_t`` (S,), the cached network times), so a loader replays the structure
(split, ``quantize_model``), calls ``restore_temporal_cache(net, state_dict, num_classes)`` and then
``net.load_state_dict(state_dict)``; ``info["structure"]["temporal_cache"]`` is True for such a net.

Measured on the shipped digits UNet (256 calibration trajectories of DDIM-20; x0 error = relative L2 error
of x0_hat against full precision averaged over the 20 steps of 64 fresh trajectories; eps MSE; 1 thread on a
shared CPU; one seed, so differences of a few per cent are noise):

    W4A8  naive min/max 0.675 (eps MSE 2.9e-3) | TFMQ quick 0.262 (8.5e-4), 44 s | TFMQ (TIAR 300, BRECQ 150
          per block) 0.230 (5.3e-4), 120 s | quick ablations: + cache "auto" (chose "fp") 0.256, no TIAR 0.266
          (eps 6.7e-4), no FSC 0.281
    W4A4  naive min/max 12.4 (0.47) | TFMQ quick, min/max FSC 3.23 (0.048), 35 s | TFMQ quick, MSE-search FSC
          (the default below 8 bits) 2.27 (0.035), 63 s | TIAR 300, BRECQ 150, min/max FSC 3.25 (0.047), 38 s
    TIAR  relative temporal-feature error 0.0227 -> 0.0123 (100 iterations), -> 0.0074 (300)
    cache DDIM-20 on the fake-quant W4A8 net: 285 -> 250 ms at batch 1 (12 %), 1.02 -> 0.97 s at 16 (5 %),
          8.4 -> 7.5 s at 256 (11 %): the temporal block is a small part of this UNet.

Most of the gain over min/max at W4 comes from the first and last layers at 8 bits and from BRECQ; FSC adds a
little; TIAR halves the temporal-feature error but its effect on x0 is within seed noise at this scale.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch
from torch import nn

from ...core.denoiser import NetworkDenoiser
from .calibration import Trajectories, calibrate_denoiser, split_concat_convs
from .modules import quant_layers, quantize_model, set_act_mode, set_quant_step
from .pipeline import QuantDenoiser, QuantResult, open_bar
from .quantizer import UniformQuantizer

__all__ = ["find_temporal_modules", "temporal_layers", "temporal_inputs", "temporal_features",
           "temporal_feature_error", "tiar", "finite_set_calibration", "enable_temporal_cache",
           "disable_temporal_cache", "restore_temporal_cache", "quantized_fp_tables", "quantize_tfmq"]

CACHE_BUFFER = "temporal_cache"
CACHE_TIMES = "temporal_cache_t"


# ------------------------------------------------------------------------------------------------
# Finding the temporal information block
# ------------------------------------------------------------------------------------------------
def _tensor_out(out):
    return out if torch.is_tensor(out) else None


@torch.no_grad()
def find_temporal_modules(net: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: dict | None = None, *,
                          seed: int = 0) -> list[str]:
    """Names of the outermost modules of ``net`` whose output depends only on (t, cond), not on x.

    Runs ``net(x1, t, **cond)`` and ``net(x2, t, **cond)`` with x1 = x and x2 = x + N(0, std(x)^2 + 1)
    (seeded), recording every module's tensor output by forward hooks. A module is temporal when it has
    parameters (its own or its children's), ran in both passes, and its outputs are bit-identical; a
    temporal module inside another temporal module is not listed. On our UNet this gives ``embed`` and
    every ResBlock's ``emb_proj``. x, t: the network's own inputs (B, ...), (B,).
    """
    cond = cond or {}
    outs: list[dict[str, list[torch.Tensor]]] = [{}, {}]
    current: dict[str, list[torch.Tensor]] = {}
    handles = []
    candidates = [(n, m) for n, m in net.named_modules() if n and any(True for _ in m.parameters())]

    def hook(name):
        def fn(_module, _args, out):
            tensor = _tensor_out(out)
            if tensor is not None:
                current.setdefault(name, []).append(tensor.detach().clone())
        return fn

    for name, m in candidates:
        handles.append(m.register_forward_hook(hook(name)))
    g = torch.Generator().manual_seed(seed)
    x2 = x + torch.randn(x.shape, generator=g).to(x) * (x.float().std() + 1.0).to(x.dtype)
    was_training = net.training
    net.eval()
    try:
        for k, xin in enumerate((x, x2)):
            current = outs[k]
            net(xin, t, **cond)
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    temporal = [n for n, _ in candidates if n in outs[0] and n in outs[1]
                and len(outs[0][n]) == len(outs[1][n])
                and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(outs[0][n], outs[1][n]))]
    outer = [n for n in temporal if not any(n.startswith(p + ".") for p in temporal)]
    if not outer:
        raise ValueError(f"{type(net).__name__} has no module whose output depends only on t and the condition; "
                         "name the temporal modules explicitly")
    return outer


def temporal_layers(net: nn.Module, modules: Sequence[str]) -> list[str]:
    """Names of the quantized layers (``quant_layers``) inside the temporal modules ``modules``."""
    return [n for n in quant_layers(net) if any(n == m or n.startswith(m + ".") for m in modules)]


def _check_modules(net: nn.Module, modules: Sequence[str]) -> list[str]:
    modules = list(modules)
    if not modules:
        raise ValueError("temporal_modules must name at least one module")
    names = dict(net.named_modules())
    missing = [m for m in modules if m not in names]
    if missing:
        raise ValueError(f"temporal_modules names no module of the net: {', '.join(missing)}")
    return modules


def _class_rows(denoiser: NetworkDenoiser) -> torch.Tensor | None:
    """Every class row the embedding has (0..num_classes, the last being the null class), or None."""
    k = denoiser.num_classes
    return None if k is None else torch.arange(k + 1)


def temporal_inputs(denoiser: NetworkDenoiser, step_times: torch.Tensor, x_shape: Sequence[int]):
    """The finite set of temporal inputs: every (step, class row) pair, as a net batch (x_in, t_in, cond) with
    x_in = 0 (the TIB does not read it), plus (step index, class row) per sample. Shapes: (S K, *x_shape)."""
    rows = _class_rows(denoiser)
    s = len(step_times)
    k = 1 if rows is None else len(rows)
    steps = torch.arange(s).repeat_interleave(k)
    x = torch.zeros((s * k, *x_shape), dtype=torch.float64)
    x_in, t_in = denoiser.net_inputs(x, torch.as_tensor(step_times, dtype=torch.float64)[steps])
    cond = {} if rows is None else {"class_labels": rows.repeat(s)}
    label_idx = torch.zeros(s * k, dtype=torch.long) if rows is None else rows.repeat(s)
    return x_in, t_in, cond, steps, label_idx


def temporal_features(net: nn.Module, modules: Sequence[str], x_in: torch.Tensor, t_in: torch.Tensor,
                      cond: dict | None = None, *, steps: torch.Tensor | None = None,
                      grad: bool = False) -> dict[str, torch.Tensor]:
    """{module: output (B, ...)} of the temporal modules for one batch. With ``steps`` (B,) the per-step
    activation sets are selected per sampling step (the batch is run step by step)."""
    cond = cond or {}
    got: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_m, _a, out):
            got[name] = out
        return fn

    handles = [net.get_submodule(n).register_forward_hook(hook(n)) for n in modules]
    try:
        with torch.set_grad_enabled(grad):
            if steps is None:
                net(x_in, t_in, **cond)
                return dict(got)
            parts: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
            order = []
            for k in torch.unique(steps).tolist():
                sel = (steps == k).nonzero().reshape(-1)
                order.append(sel)
                set_quant_step(net, int(k))
                net(x_in[sel], t_in[sel], **{c: v[sel] for c, v in cond.items()})
                for n in modules:
                    parts[n].append(got[n])
            inv = torch.argsort(torch.cat(order))
            return {n: torch.cat(parts[n])[inv] for n in modules}
    finally:
        for h in handles:
            h.remove()


def temporal_feature_error(feats: dict[str, torch.Tensor], ref: dict[str, torch.Tensor],
                           steps: torch.Tensor | None = None) -> torch.Tensor:
    """Relative temporal-feature error sum_i ||emb_i - emb^fp_i||^2 / ||emb^fp_i||^2 summed over the temporal
    modules i, per sampling step (S,) when ``steps`` (B,) is given, else one number."""
    total = 0.0
    for n, r in ref.items():
        d = (feats[n].detach().float() - r.float()).reshape(r.shape[0], -1).pow(2).sum(1)
        rr = r.float().reshape(r.shape[0], -1).pow(2).sum(1)
        if steps is None:
            total = total + d.sum() / rr.sum().clamp_min(1e-12)
        else:
            s = int(steps.max()) + 1
            num = torch.zeros(s).index_add_(0, steps, d)
            den = torch.zeros(s).index_add_(0, steps, rr).clamp_min(1e-12)
            total = total + num / den
    return torch.as_tensor(total)


# ------------------------------------------------------------------------------------------------
# FSC: finite-set calibration
# ------------------------------------------------------------------------------------------------
def finite_set_calibration(qden: NetworkDenoiser, traj: Trajectories, *, per_step: int | None = None,
                           method: str = "minmax", batch_size: int = 256) -> NetworkDenoiser:
    """TFMQ-DM's finite-set calibration: for each recorded sampling step k, calibrate activation set k of every
    per-step quantizer of ``qden.net`` (built with ``quantize_model(act_steps=traj.num_steps)``) on the first
    ``per_step`` trajectories (default all) at that step only: (Delta_k, z_k) = range(A_l(x_{t_k})) by
    ``method`` ("minmax", "percentile" or "mse"). Returns ``qden``."""
    qs = [m.a_quant for m in quant_layers(qden.net).values() if m.a_quant is not None]
    if not qs or any(q.num_steps != traj.num_steps for q in qs):
        raise ValueError(f"finite-set calibration needs per-step activation sets: quantize_model(..., "
                         f"act_steps={traj.num_steps}) for the {traj.num_steps} recorded steps")
    n = traj.num_samples if per_step is None else int(per_step)
    if not 1 <= n <= traj.num_samples:
        raise ValueError(f"per_step must be in 1..{traj.num_samples}; got {per_step}")
    for k in range(traj.num_steps):
        cs = traj.take(torch.full((n,), k), torch.arange(n), "fsc")
        set_quant_step(qden.net, k)
        calibrate_denoiser(qden, cs, method, batch_size=batch_size, step=k)
    return qden


# ------------------------------------------------------------------------------------------------
# Temporal feature cache ("Temporal Feature Matters")
# ------------------------------------------------------------------------------------------------
class _CacheState:
    """The lookup index of the current network call: (step (B,), class row (B,)) or None (recompute)."""

    def __init__(self, num_classes: int | None):
        self.num_classes = num_classes
        self.index: tuple[torch.Tensor, torch.Tensor] | None = None


def _cache_pre_hook(net, args, kwargs):
    state: _CacheState = net._temporal_cache_state
    t = args[1] if len(args) > 1 else kwargs.get("t")
    x = args[0] if args else kwargs.get("x")
    state.index = None
    if t is None or x is None:
        return None
    b = x.shape[0]
    t = torch.as_tensor(t).reshape(-1).to(torch.float64)
    t = t.expand(b) if t.numel() == 1 else t
    times = getattr(net, CACHE_TIMES).to(device=t.device, dtype=torch.float64)
    dist = (t[:, None] - times[None, :]).abs()
    d, step = dist.min(dim=1)
    if bool((d > 1e-4 * (1.0 + t.abs())).any()):
        return None  # a time outside the cached grid: the TIB runs as usual
    labels = kwargs.get("class_labels")
    if state.num_classes is None:
        row = torch.zeros(b, dtype=torch.long, device=t.device)
    elif labels is None:
        row = torch.full((b,), state.num_classes, dtype=torch.long, device=t.device)
    else:
        row = torch.as_tensor(labels, device=t.device).long().reshape(-1).expand(b)
    state.index = (step, row)
    return None


def _cached_forward(self, *args, **kwargs):
    index = self._temporal_cache_state.index
    if index is None:
        return type(self).forward(self, *args, **kwargs)
    step, row = index
    return getattr(self, CACHE_BUFFER)[step.to(self.temporal_cache.device), row.to(self.temporal_cache.device)]


def _attach_cache(net: nn.Module, times_in: torch.Tensor, tables: dict[str, torch.Tensor],
                  num_classes: int | None) -> None:
    import types

    disable_temporal_cache(net)
    state = _CacheState(num_classes)
    net._temporal_cache_state = state
    net.register_buffer(CACHE_TIMES, times_in.detach().to(torch.float64).clone())
    for name, table in tables.items():
        m = net.get_submodule(name)
        m.register_buffer(CACHE_BUFFER, table.detach().clone())
        m._temporal_cache_state = state
        m.forward = types.MethodType(_cached_forward, m)
    net.register_forward_pre_hook(_cache_pre_hook, with_kwargs=True)


def disable_temporal_cache(net: nn.Module) -> nn.Module:
    """Remove a temporal cache from ``net`` (its modules compute again); a no-op without one."""
    # found by identity rather than through a stored handle, which a deep copy would share with the original
    for key, fn in list(net._forward_pre_hooks.items()):
        if fn is _cache_pre_hook:
            del net._forward_pre_hooks[key]
            net._forward_pre_hooks_with_kwargs.pop(key, None)
    for m in net.modules():
        if CACHE_BUFFER in m._buffers:
            del m._buffers[CACHE_BUFFER]
            m.__dict__.pop("forward", None)
            m.__dict__.pop("_temporal_cache_state", None)
    net._buffers.pop(CACHE_TIMES, None)
    net.__dict__.pop("_temporal_cache_state", None)
    return net


@torch.no_grad()
def enable_temporal_cache(qden: NetworkDenoiser, step_times: torch.Tensor, modules: Sequence[str], x_shape,
                          *, tables: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Precompute the temporal features emb_{t,i} of ``modules`` for every sampling step t in ``step_times``
    and every class row y, store them in each module (buffer ``temporal_cache``, shape (S, K, *out), K = 1
    or num_classes + 1) and make the modules look them up instead of computing: at a network call whose
    times all lie on the cached grid, module i returns table_i[step(t), y]; at any other time it computes.
    ``tables``: store these tables (e.g. the "fp" variant) instead of the net's own outputs. The net's
    state_dict gains the tables and the network times (``temporal_cache_t``). Returns the tables."""
    net = qden.net
    modules = _check_modules(net, modules)
    disable_temporal_cache(net)
    x_in, t_in, cond, steps, rows = temporal_inputs(qden, step_times, x_shape)
    s, k = len(step_times), int(rows.max()) + 1
    if tables is None:
        per_step = any(q.a_quant is not None and q.a_quant.num_steps is not None for q in quant_layers(net).values())
        feats = temporal_features(net, modules, x_in, t_in, cond, steps=steps if per_step else None)
        tables = {n: f.reshape(s, k, *f.shape[1:]) for n, f in feats.items()}
    times_in = t_in.reshape(s, k)[:, 0]
    _attach_cache(net, times_in, tables, qden.num_classes)
    return tables


def restore_temporal_cache(net: nn.Module, state_dict: dict, num_classes: int | None) -> None:
    """Rebuild a saved temporal cache before ``net.load_state_dict(state_dict)``: attach a cache to every
    module whose ``<name>.temporal_cache`` key is in ``state_dict``, with the stored tables and times."""
    suffix = "." + CACHE_BUFFER
    tables = {k[: -len(suffix)]: v for k, v in state_dict.items() if k.endswith(suffix)}
    if CACHE_TIMES not in state_dict or not tables:
        raise ValueError("state_dict holds no temporal cache (temporal_cache_t / *.temporal_cache keys)")
    _attach_cache(net, state_dict[CACHE_TIMES], tables, num_classes)


@torch.no_grad()
def quantized_fp_tables(fp_den: NetworkDenoiser, step_times: torch.Tensor, modules: Sequence[str], x_shape,
                        abits: int) -> dict[str, torch.Tensor]:
    """The "fp" cache variant: Q_a(emb^fp_{t,i}), the full-precision temporal features quantized at ``abits``
    with one asymmetric min/max range per sampling step and module. Tables (S, K, *out)."""
    x_in, t_in, cond, steps, rows = temporal_inputs(fp_den, step_times, x_shape)
    s, k = len(step_times), int(rows.max()) + 1
    feats = temporal_features(fp_den.net, modules, x_in, t_in, cond)
    out = {}
    for n, f in feats.items():
        q = UniformQuantizer(abits, num_steps=s)
        table = f.reshape(s, k, *f.shape[1:])
        rows_q = []
        for j in range(s):
            q.init_range(table[j], "minmax", step=j)
            q.set_step(j)
            rows_q.append(q(table[j]))
        out[n] = torch.stack(rows_q)
    return out


# ------------------------------------------------------------------------------------------------
# TIAR: temporal-information-aware reconstruction
# ------------------------------------------------------------------------------------------------
def _feature_loss(feats: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum_i mean_batch ||emb^q_i - emb^fp_i||^2 (sum over features, mean over the batch)."""
    return sum((feats[n] - r).pow(2).reshape(r.shape[0], -1).sum(1).mean() for n, r in ref.items())


def tiar(qden: NetworkDenoiser, fp_den: NetworkDenoiser, modules: Sequence[str], step_times: torch.Tensor,
         x_shape: Sequence[int], *, iters: int = 1000, batch_size: int = 32, lr: float = 1e-2,
         reg_weight: float = 0.01, beta: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2, seed: int = 0,
         progress=None) -> dict:
    """TFMQ-DM's temporal-information-aware reconstruction (arXiv 2311.16503, Sec. 4.2) of ``qden.net`` in place.

    Only the weights of the quantized layers inside the temporal modules are reconstructed, with AdaRound
    (``reconstruction.AdaRoundQuantizer``: rectified-sigmoid rounding offsets h(V), Adam on V, regulariser
    lambda sum (1 - |2h - 1|^beta) with beta annealed 20 -> 2 after the warm-up), on the finite set of
    temporal inputs (every sampling step in ``step_times`` x every class row):

        min_V  mean_{(t,y)} sum_i ||emb^q_i(t, y) - emb^fp_i(t, y)||^2 + lambda sum_l f_reg(V_l)

    over minibatches of ``batch_size`` pairs, i over the temporal modules' outputs. Activation quantizers are
    off during it (the weight stage); every other parameter of the net is untouched (the other layers run
    with float weights meanwhile: the temporal outputs do not depend on them). ``lr`` defaults to 1e-2, ten
    times the reference's 1e-3, because the budgets here are 100-1000 iterations instead of 20k: measured on
    the digits UNet at W4 (200 iterations) the relative temporal-feature error goes 0.0209 -> 0.0110 with
    1e-2 and 0.0209 -> 0.0213 with 1e-3. The hard rounding is
    baked into the layers' float weights (on their grids). Returns {"layers", "iters", "samples",
    "error_before", "error_after", "seconds"} with the relative temporal-feature errors (nearest rounding
    before, baked rounding after; ``temporal_feature_error``)."""
    from .reconstruction import AdaRoundQuantizer, adaround_beta

    if iters < 1 or batch_size < 1:
        raise ValueError(f"iters and batch_size must be >= 1; got {iters}, {batch_size}")
    t0 = time.perf_counter()
    net = qden.net
    modules = _check_modules(net, modules)
    inside = set(temporal_layers(net, modules))
    layers = {n: m for n, m in quant_layers(net).items() if n in inside and m.w_quant is not None}
    if not layers:
        raise ValueError("the temporal modules hold no quantized weight to reconstruct")
    x_in, t_in, cond, _, _ = temporal_inputs(fp_den, step_times, x_shape)
    ref = {n: f.detach() for n, f in temporal_features(fp_den.net, modules, x_in, t_in, cond).items()}
    modes = {id(m.a_quant): m.a_quant.mode for m in quant_layers(net).values() if m.a_quant is not None}
    set_act_mode(net, "off")
    before = float(temporal_feature_error(temporal_features(net, modules, x_in, t_in, cond), ref))
    requires = {id(p): p.requires_grad for p in net.parameters()}
    for p in net.parameters():
        p.requires_grad_(False)
    saved = {n: m.w_quant for n, m in layers.items()}
    ada = {n: AdaRoundQuantizer(m.w_quant, m.layer.weight) for n, m in layers.items()}
    # the temporal outputs do not depend on the x path: run it with float weights (cheaper, same loss)
    others = {n: m.w_quant for n, m in quant_layers(net).items() if n not in inside}
    n_pairs = x_in.shape[0]
    bsz = min(batch_size, n_pairs)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([a.v for a in ada.values()], lr=lr)
    bar = open_bar(progress, "TIAR (temporal block)", iters)
    done = False
    try:
        for n, m in layers.items():
            m.w_quant = ada[n]
        for n in others:
            quant_layers(net)[n].w_quant = None
        for it in range(iters):
            idx = torch.randperm(n_pairs, generator=gen)[:bsz]
            feats = temporal_features(net, modules, x_in[idx], t_in[idx], {c: v[idx] for c, v in cond.items()},
                                      grad=True)
            loss = _feature_loss(feats, {n: r[idx] for n, r in ref.items()})
            if it >= warmup * iters:
                b = adaround_beta(it, iters, beta=beta, warmup=warmup)
                loss = loss + reg_weight * sum(a.regularizer(b) for a in ada.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
        done = True
    finally:
        bar.close()
        with torch.no_grad():
            for n, m in layers.items():
                if done:
                    m.layer.weight.copy_(ada[n].hard_weight())
                m.w_quant = saved[n]
            wrappers = quant_layers(net)
            for n, q in others.items():
                wrappers[n].w_quant = q
        for p in net.parameters():
            p.requires_grad_(requires.get(id(p), False))
    after = float(temporal_feature_error(temporal_features(net, modules, x_in, t_in, cond), ref))
    for m in quant_layers(net).values():
        if m.a_quant is not None:
            m.a_quant.mode = modes[id(m.a_quant)]
    return {"layers": list(layers), "iters": iters, "samples": n_pairs, "error_before": before,
            "error_after": after, "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------------
# the method
# ------------------------------------------------------------------------------------------------
CACHE_CHOICES = ("tib", "fp", "auto")


def _split_if_unet(net: nn.Module) -> list[str]:
    from ...nets.unet import UNet

    if not isinstance(net, UNet):
        return []
    try:
        split_concat_convs(net, ("skip",))
    except ValueError:  # no decoder conv consumes a concatenation
        return []
    return ["skip"]


class _TemporalWeightsFixed:
    """Context: the temporal layers' weight quantizers detached (their weights already lie on the grid after
    TIAR, so the output is unchanged) so that BRECQ does not learn their rounding again."""

    def __init__(self, net: nn.Module, layer_names: Sequence[str]):
        self.layers = [quant_layers(net)[n] for n in layer_names]

    def __enter__(self):
        self.saved = [m.w_quant for m in self.layers]
        for m in self.layers:
            if m.w_quant is not None and not torch.equal(m.w_quant(m.layer.weight), m.layer.weight):
                raise RuntimeError("a temporal layer's weight is not on its grid; run TIAR first")
            m.w_quant = None

    def __exit__(self, *exc):
        for m, q in zip(self.layers, self.saved):
            m.w_quant = q


def quantize_tfmq(denoiser: NetworkDenoiser, wbits: int, abits: int, *, traj: Trajectories, seed: int = 0,
                  quick: bool = False, progress=None, temporal_modules: Sequence[str] | None = None,
                  temporal_cache: str | None = None, tiar_iters: int | None = None, recon_iters: int | None = None,
                  recon_steps: int = 10, fsc_per_step: int | None = None, fsc_method: str | None = None,
                  weight_method: str = "minmax", first_last_bits: int | None = 8, lr_v: float = 1e-2,
                  use_tiar: bool = True, use_fsc: bool = True) -> QuantResult:
    """TFMQ-DM (Huang et al., CVPR 2024, arXiv 2311.16503) post-training quantization, optionally with the cached
    temporal features of "Temporal Feature Matters" (arXiv 2407.19547). The method contract of ``pipeline``.

    1. Structure: Q-Diffusion's split shortcut (our UNet), then ``quantize_model(net, wbits, abits,
       weight_method=weight_method, act_steps=S)``: per-channel weights, every layer (first and last included)
       quantized, one per-tensor activation set per sampling step (S = the recorded steps of ``traj``). The
       reference initialises weights by the MSE range search; at our budgets min/max is better (digits UNet,
       W4A8, BRECQ 100 iterations per block: x0 error 0.573 after min/max init, 0.674 after MSE init), so
       "minmax" is the default. ``first_last_bits`` (default 8; None quantizes them like the rest) keeps the
       first and last quantizable layers (our UNet: the time MLP's first Linear and ``conv_out``) at that width,
       the BRECQ-lineage default (``set_first_last_layer_to_8bit`` unless ``--disable_8bit_head_stem``); whether
       the TFMQ release keeps it is not verified. Measured (digits UNet, W4A8, 128 trajectories, quick): x0
       error 0.593 with every layer at 4 bits, 0.246 with the two end layers at 8 bits.
    2. TIAR (``tiar``): AdaRound of the temporal block (``find_temporal_modules`` or ``temporal_modules``)
       on its temporal-feature loss over the S sampling times x every class row.
    3. BRECQ (``reconstruction.reconstruct_blocks``, weights only, activations off, AdaRound lr ``lr_v``:
       1e-2 instead of the reference's 1e-3 for budgets of hundreds rather than 20k iterations) of every other block
       (ResBlock / attention / single layer), the temporal layers' (TIAR-baked) weights held fixed, on
       ``recon_steps`` evenly spaced steps of the trajectories (``qdiffusion_calibration``; the reference
       uses every 5th of 100 steps), N trajectories in all.
    4. FSC (``finite_set_calibration``): activation set k of every layer calibrated on the ``fsc_per_step``
       (default all N) trajectories at step k, by ``fsc_method`` (default: the reference's MSE range search
       below 8 activation bits, min/max at 8 and above; measured W4A4 quick: x0 error 2.27 with "mse",
       3.23 with "minmax", at 4x the calibration time).
    5. ``temporal_cache`` (None: off): "tib" caches the quantized temporal block's outputs (lookup = recompute),
       "fp" caches Q_a(emb^fp) per step, "auto" the one with the smaller relative temporal-feature error
       (the extension's disturbance-aware choice); see ``enable_temporal_cache``.

    ``quick``: 100 TIAR / 40 BRECQ iterations per block (else 1000 / 400; the reference: 20k each).
    ``use_tiar`` / ``use_fsc`` False give the ablations (temporal block reconstructed inside BRECQ's blocks; one
    activation set for all steps, calibrated on one random step per trajectory). Returns a ``QuantResult``
    whose denoiser is a ``QuantDenoiser`` with ``step_times`` (per-step sets) and ``info`` holding the
    structure, the temporal modules, TIAR / BRECQ statistics and the cache choice.
    """
    from .calibration import qdiffusion_calibration, uniform_calibration
    from .reconstruction import find_blocks, reconstruct_blocks

    if temporal_cache is not None and temporal_cache not in CACHE_CHOICES:
        raise ValueError(f"temporal_cache must be None or one of {', '.join(CACHE_CHOICES)}; got {temporal_cache!r}")
    if temporal_cache is not None and not use_fsc:
        raise ValueError("the temporal cache is indexed by sampling step: it needs use_fsc=True")
    t0 = time.perf_counter()
    tiar_iters = (100 if quick else 1000) if tiar_iters is None else int(tiar_iters)
    recon_iters = (40 if quick else 400) if recon_iters is None else int(recon_iters)
    fp_den = denoiser
    fp_net = denoiser.net.eval()
    s = traj.num_steps
    step_times = traj.t.clone()
    x_shape = tuple(traj.x.shape[2:])

    net = copy.deepcopy(fp_net).eval()
    if temporal_modules is None:
        k = min(4, traj.num_samples)
        x_in, t_in = fp_den.net_inputs(traj.x[0, :k].to(torch.float64), traj.t[0].expand(k))
        modules = find_temporal_modules(fp_net, x_in, t_in, {c: v[:k] for c, v in traj.cond.items()}, seed=seed)
    else:
        modules = _check_modules(fp_net, temporal_modules)
    split = _split_if_unet(net)
    qkw = {"weight_method": weight_method}
    if first_last_bits is not None:
        qkw["first_last_bits"] = int(first_last_bits)
    if use_fsc:
        qkw["act_steps"] = s
    quantize_model(net, wbits, abits, **qkw)
    qden = QuantDenoiser(net, fp_den, step_times=step_times if use_fsc else None)
    t_layers = temporal_layers(net, modules)
    set_act_mode(net, "off")
    calib_seconds = time.perf_counter() - t0

    # weight stage: TIAR, then BRECQ of the rest
    t1 = time.perf_counter()
    tiar_stats = None
    if use_tiar:
        tiar_stats = tiar(qden, fp_den, modules, step_times, x_shape, iters=tiar_iters, lr=lr_v, seed=seed,
                          progress=progress)
    n = traj.num_samples
    n_steps = min(recon_steps, s)
    recon_set = qdiffusion_calibration(traj, num_steps=n_steps, per_step=max(1, n // n_steps), seed=seed)

    def run_batches():
        return [lambda m, b=b: m(*qden.net_inputs(b[0], b[1]), **b[2]) for b in recon_set.batches(64)]

    blocks = find_blocks(net)
    if use_tiar:
        blocks = [b for b in blocks if not any(b == m or b.startswith(m + ".") for m in modules)]
        with _TemporalWeightsFixed(net, t_layers):
            recon_stats = reconstruct_blocks(net, fp_net, run_batches, blocks=blocks, iters=recon_iters,
                                             adaround=True, lr_v=lr_v, seed=seed, progress=progress)
    else:
        recon_stats = reconstruct_blocks(net, fp_net, run_batches, blocks=blocks, iters=recon_iters, adaround=True,
                                         lr_v=lr_v, seed=seed, progress=progress)
    finetune_seconds = time.perf_counter() - t1

    # activation stage: FSC (or one shared set)
    t2 = time.perf_counter()
    if fsc_method is None:
        fsc_method = "mse" if abits < 8 else "minmax"
    set_act_mode(net, "quant")
    if use_fsc:
        finite_set_calibration(qden, traj, per_step=fsc_per_step, method=fsc_method)
    else:
        calibrate_denoiser(qden, uniform_calibration(traj, seed=seed), fsc_method)

    info = {"structure": {"split": split, "quantize_model": dict(qkw), "attention": None,
                          "temporal_cache": temporal_cache is not None},
            "calibration": (f"{n} fp DDIM trajectories: TIAR on {s} steps x class rows, BRECQ on {n_steps} evenly "
                            f"spaced steps, {'per-step activation sets (FSC)' if use_fsc else 'one activation set'} "
                            f"by {fsc_method}"),
            "temporal_modules": list(modules), "tiar": tiar_stats,
            "brecq": {b: {k: v for k, v in st.items() if k != "layers"} for b, st in recon_stats.items()}}
    if temporal_cache is not None:
        info["temporal_cache"] = _choose_cache(qden, fp_den, modules, step_times, x_shape, abits, temporal_cache)
    calib_seconds += time.perf_counter() - t2
    return QuantResult(qden, "tfmq", wbits, abits, calib_seconds=calib_seconds, finetune_seconds=finetune_seconds,
                       info=info)


@torch.no_grad()
def _choose_cache(qden, fp_den, modules, step_times, x_shape, abits: int, choice: str) -> dict:
    """Build the cache variants, measure their relative temporal-feature error against full precision and
    attach the chosen one (the disturbance-aware choice of arXiv 2407.19547 for ``choice="auto"``)."""
    x_in, t_in, cond, steps, _ = temporal_inputs(fp_den, step_times, x_shape)
    ref = temporal_features(fp_den.net, modules, x_in, t_in, cond)
    s = len(step_times)
    errors = {}
    tables = {}
    if choice in ("tib", "auto"):
        feats = temporal_features(qden.net, modules, x_in, t_in, cond, steps=steps)
        tables["tib"] = {n: f.reshape(s, -1, *f.shape[1:]) for n, f in feats.items()}
        errors["tib"] = float(temporal_feature_error(feats, ref))
    if choice in ("fp", "auto"):
        tables["fp"] = quantized_fp_tables(fp_den, step_times, modules, x_shape, abits)
        flat = {n: v.reshape(-1, *v.shape[2:]) for n, v in tables["fp"].items()}
        errors["fp"] = float(temporal_feature_error(flat, ref))
    chosen = min(errors, key=errors.get)
    enable_temporal_cache(qden, step_times, modules, x_shape, tables=tables[chosen])
    return {"variant": chosen, "errors": errors}
