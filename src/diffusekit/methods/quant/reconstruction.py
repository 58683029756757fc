"""AdaRound (learned weight rounding) and BRECQ block reconstruction for any ``quantize_model``-ed network.

Public API (the TFMQ-DM / EDA-DM pieces build on it)::

    reconstruct_blocks(q_net, fp_net, run_batches, *, blocks=None, iters=300, adaround=True, learn_act=False,
                       layer_loss_weight=0.0, layer_loss_exclude_last=False, batch_size=32, p=2.0,
                       lr_v=1e-2, lr_act=4e-4, reg_weight=0.01, beta=(20.0, 2.0), warmup=0.2, qdrop_prob=0.0,
                       block_types=DEFAULT_BLOCK_TYPES, seed=0, progress=None) -> dict[str, dict]
    find_blocks(q_net, *, block_types=DEFAULT_BLOCK_TYPES, learn_act=False) -> list[str]
    AdaRoundQuantizer(w_quant, weight)          # soft/hard rounding of one layer's weight
    rectified_sigmoid(v), adaround_beta(it, iters, *, beta=(20, 2), warmup=0.2)

``run_batches()`` returns an iterable over the calibration batches; each item is either a callable
``item(net)`` that runs a network on that batch (e.g. ``lambda net: net(*den.net_inputs(x, t), **cond)``), or
a tuple / dict / tensor passed as ``net(*item)`` / ``net(**item)`` / ``net(item)``. It is called several
times (once per block for each network), and must yield the same batches every time. Every tensor a block
takes or returns is taken to be batched along dim 0 (cached inputs are concatenated and minibatched there).
The function returns, per reconstructed block in execution order, ``{"layers", "iters", "samples",
"mse_before", "mse_after", "loss_first", "loss_last", "seconds"}`` (``mse_*``: mean squared error of the
block output against the full-precision block on the full-precision input, over all cached samples, with
nearest rounding before and the baked rounding after).

AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization",
arXiv 2004.10568, eq. 21-24). Each weight is rounded down or up as a learned choice:

    W_soft = Delta * (clamp(floor(W / Delta) + h(V) + z, q_min, q_max) - z)
    h(V)   = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1),   zeta = 1.1, gamma = -0.1   (rectified sigmoid)
    f_reg  = sum_ij 1 - |2 h(V_ij) - 1|^beta                                             (rounding regulariser)

with V initialised so that h(V) = W / Delta - floor(W / Delta) (then W_soft = W inside the clamp range) and
beta annealed linearly from 20 to 2 after a warm-up of 20 % of the iterations (no regulariser during it).
At the end the rounding is made hard, h = 1[V >= 0], and the result is baked into the layer's float weight,
so the stored weight lies exactly on its quantizer's grid (``w_quant(W) == W``) and the network keeps the
standard ``quantize_model`` structure. Delta and z are the weight quantizer's own (fixed here).

BRECQ block reconstruction (Li et al. 2021, "BRECQ: Pushing the Limit of Post-Training Quantization by Block
Reconstruction", arXiv 2102.05426, Sec. 3-4; the rounding/annealing schedule of AdaRound). Blocks are
reconstructed one at a time in execution order; for block B with quantized layers L_B:

    min_{V, s_a}  E_batch [ || B_fp(x_fp) - B_q(x_q) ||_p^p ]  +  lambda sum_{l in L_B} f_reg(V_l)
                  + eta sum_{l in L_B} || l_q(.) - l_fp(.) ||_p^p                 (optional, ``layer_loss_weight``)

where x_q is the block's input in the quantized network (whose earlier blocks are already reconstructed and
baked) and B_fp(x_fp) the full-precision network's block output, both captured with forward hooks while the
whole networks run on the calibration batches (nothing about the network's internals is assumed beyond the
block names; only a block's first call per network run is used, and the run stops right after it).
||.||_p^p sums over dim 1 (channels / features) and averages over the batch and every other dim (the
reference ``lp_loss``). lambda = 0.01 (``reg_weight``); only the AdaRound V (Adam, ``lr_v``) and,
with ``learn_act``, the step sizes Delta of the block's activation quantizers (Adam, lr 4e-4, cosine decay
to 0; zero points fixed; Q-Diffusion's second stage) are optimised; all float weights stay frozen.

The per-layer term (EDA-DM's fine-grained block reconstruction, arXiv 2401.04585) compares every quantized
layer's output inside the block with its full-precision twin: the same layer with every quantizer of the
block switched off, run on the full-precision block input, so layers split by ``split_concat_convs`` have a
twin too. ``layer_loss_exclude_last`` drops the last layer executed in the block (EDA-DM's "except the
last"). ``qdrop_prob`` (QDrop, Wei et al. 2022, arXiv 2203.05740) replaces each element of the quantized
block input by its full-precision value with that probability, independently per iteration.

Blocks: ``blocks=None`` picks, generically, the topmost submodules whose class name is in ``block_types``
(our UNet's ``ResBlock``, ``AttentionBlock`` and the time embedding ``TimeClassEmbedding``; diffusers' names
are listed too), and every quantized layer outside them becomes a block of its own. Blocks without anything
to optimise are skipped. Or pass qualified module names (any submodule of ``q_net`` whose twin in ``fp_net``
has the same name); quantized layers outside them are left as they are.

Activation quantizers keep the mode the caller set (``modules.set_act_mode``): BRECQ / Q-Diffusion's weight
stage runs with activations "off", the activation stage with them in "quant". Per-sampling-step activation
sets (``num_steps``) cannot be learned here (``learn_act`` raises); per-step quantizers in "quant" mode read
the step selected at the time a block runs.

Budget and the V learning rate: the reference runs 20k iterations per block (batch 32) with lr 1e-3; the
defaults here (300 iterations) suit small CPU models, and at that length lr 1e-3 is too small: Adam moves each
V by about lr per step while h(V) only saturates at |V| ~ 2.4, so almost no rounding decision can flip and the
hard rounding at the end is nearest rounding plus noise. Measured on digits_unet (W4 weights, activations
off, 320 Q-Diffusion calibration samples, 200 iterations per block): relative x0 error 0.535 with nearest
rounding, 0.747 with lr 1e-3, 0.519 with 1e-2, 0.630 with 3e-2 (eps MSE 0.00214 -> 0.00145 at 1e-2), hence
the default ``lr_v = 1e-2``; pass 1e-3 with the reference's 20k iterations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from .modules import _QuantWrapper, _run, quant_layers
from .pipeline import open_bar
from .quantizer import _EPS, UniformQuantizer

__all__ = ["AdaRoundQuantizer", "rectified_sigmoid", "adaround_beta", "find_blocks", "reconstruct_blocks",
           "DEFAULT_BLOCK_TYPES", "ZETA", "GAMMA"]

ZETA, GAMMA = 1.1, -0.1

#: Class names treated as reconstruction blocks by default: ours (``nets.unet``, ``nets.embedding``) and
#: diffusers' UNet / transformer building blocks.
DEFAULT_BLOCK_TYPES = ("ResBlock", "AttentionBlock", "TimeClassEmbedding", "ResnetBlock2D", "Attention",
                       "BasicTransformerBlock", "TimestepEmbedding", "DiTBlock")


def rectified_sigmoid(v: torch.Tensor, zeta: float = ZETA, gamma: float = GAMMA) -> torch.Tensor:
    """h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1) (AdaRound, arXiv 2004.10568, eq. 23)."""
    return torch.clamp(torch.sigmoid(v) * (zeta - gamma) + gamma, 0.0, 1.0)


def adaround_beta(it: int, iters: int, *, beta: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2) -> float:
    """The annealed exponent of the rounding regulariser at iteration ``it`` of ``iters``: beta_start during
    the warm-up (the first ``warmup`` fraction), then linear to beta_end at the last iteration (AdaRound,
    arXiv 2004.10568, Sec. 4; the reference ``LinearTempDecay``)."""
    start = warmup * iters
    if it < start:
        return float(beta[0])
    rel = (it - start) / max(iters - start, 1e-12)
    return float(beta[1] + (beta[0] - beta[1]) * max(0.0, 1.0 - rel))


class AdaRoundQuantizer(nn.Module):
    """Learned up/down rounding of one weight tensor on the grid of its per-channel quantizer ``w_quant``.

        soft:  W_q = Delta (clamp(floor(W / Delta) + h(V) + z, q_min, q_max) - z)
        hard:  W_q = Delta (clamp(floor(W / Delta) + 1[V >= 0] + z, q_min, q_max) - z)

    V has W's shape and starts at h(V) = frac(W / Delta) = W / Delta - floor(W / Delta), i.e.
    V = -log((zeta - gamma) / (frac - gamma) - 1) (AdaRound, arXiv 2004.10568). Use it in place of the layer's
    ``w_quant`` (its forward ignores its argument: W is fixed at construction). ``soft`` selects h(V) or the
    hard rounding.
    """

    def __init__(self, w_quant: UniformQuantizer, weight: torch.Tensor, *, zeta: float = ZETA, gamma: float = GAMMA):
        super().__init__()
        if w_quant.num_steps is not None:
            raise ValueError("AdaRound needs a weight quantizer with one (Delta, z) set, not per-step sets")
        w = weight.detach()
        scale, zp, ok = w_quant._params()
        if not ok:
            raise ValueError("the weight quantizer is not initialised")
        self.zeta, self.gamma = float(zeta), float(gamma)
        self.q_min, self.q_max = w_quant.q_min, w_quant.q_max
        self.register_buffer("scale", w_quant._broadcast(scale.detach().clamp_min(_EPS), w).to(w.dtype).clone())
        self.register_buffer("zero_point", w_quant._broadcast(zp.detach(), w).to(w.dtype).clone())
        w_div = w / self.scale
        self.register_buffer("w_floor", torch.floor(w_div))
        frac = (w_div - self.w_floor).clamp(0.0, 1.0)
        # h(V) = frac  <=>  sigmoid(V) = (frac - gamma) / (zeta - gamma)
        self.v = nn.Parameter(-torch.log((self.zeta - self.gamma) / (frac - self.gamma) - 1.0))
        self.soft = True

    def h(self) -> torch.Tensor:
        """The rounding offsets in [0, 1]: h(V) (soft) or 1[V >= 0] (hard)."""
        if self.soft:
            return rectified_sigmoid(self.v, self.zeta, self.gamma)
        return (self.v >= 0).to(self.v.dtype)

    def regularizer(self, beta: float) -> torch.Tensor:
        """f_reg = sum 1 - |2 h(V) - 1|^beta (AdaRound, arXiv 2004.10568, eq. 24)."""
        h = rectified_sigmoid(self.v, self.zeta, self.gamma)
        return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()

    def forward(self, _weight: torch.Tensor | None = None) -> torch.Tensor:
        x_q = torch.clamp(self.w_floor + self.h() + self.zero_point, self.q_min, self.q_max)
        return (x_q - self.zero_point) * self.scale

    @torch.no_grad()
    def hard_weight(self) -> torch.Tensor:
        """The weight with hard rounding, on the quantizer's grid."""
        soft, self.soft = self.soft, False
        try:
            return self.forward().detach().clone()
        finally:
            self.soft = soft


# ------------------------------------------------------------------------------------------------
# blocks
# ------------------------------------------------------------------------------------------------
def _is_weight_quantizer(q: nn.Module, wrappers: Iterable[_QuantWrapper]) -> bool:
    return any(q is w.w_quant for w in wrappers)


def _act_quantizers(module: nn.Module) -> list[UniformQuantizer]:
    """Every activation quantizer inside ``module`` (layer inputs, attention matmul inputs, ...)."""
    wrappers = list(quant_layers(module).values())
    if isinstance(module, _QuantWrapper):
        wrappers.append(module)
    return [q for q in module.modules() if isinstance(q, UniformQuantizer) and not _is_weight_quantizer(q, wrappers)]


def _wrappers(module: nn.Module) -> dict[str, _QuantWrapper]:
    if isinstance(module, _QuantWrapper):
        return {"": module}
    return quant_layers(module)


def _inside(name: str, parent: str) -> bool:
    return parent == "" or name == parent or name.startswith(parent + ".")


def find_blocks(q_net: nn.Module, *, block_types: Sequence[str] = DEFAULT_BLOCK_TYPES,
                learn_act: bool = False) -> list[str]:
    """Qualified names of the reconstruction blocks of ``q_net`` (registration order): the topmost submodules
    whose class name is in ``block_types`` and that hold a quantized layer (or, with ``learn_act``, an
    activation quantizer), then every quantized layer outside all of them as its own block."""
    layers = quant_layers(q_net)
    chosen: list[str] = []
    for name, m in q_net.named_modules():
        if not name or type(m).__name__ not in block_types or any(_inside(name, c) for c in chosen):
            continue
        if any(_inside(n, name) for n in layers) or (learn_act and _act_quantizers(m)):
            chosen.append(name)
    singles = [n for n in layers if not any(_inside(n, c) for c in chosen)]
    order = {n: i for i, (n, _) in enumerate(q_net.named_modules())}
    return sorted(chosen + singles, key=order.__getitem__)


def _check_blocks(q_net: nn.Module, fp_net: nn.Module, blocks: Sequence[str]) -> list[str]:
    blocks = list(blocks)
    if not blocks:
        raise ValueError("blocks is empty: name at least one submodule to reconstruct")
    if len(set(blocks)) != len(blocks):
        raise ValueError("blocks names a module twice")
    q_names = dict(q_net.named_modules())
    fp_names = dict(fp_net.named_modules())
    for b in blocks:
        if not b or b not in q_names:
            raise ValueError(f"block {b!r} is not a submodule of the quantized network (give qualified names)")
        if b not in fp_names:
            raise ValueError(f"block {b!r} has no twin of that name in the full-precision network")
        for other in blocks:
            if other != b and _inside(other, b):
                raise ValueError(f"blocks {b!r} and {other!r} overlap; give disjoint submodules")
    return blocks


# ------------------------------------------------------------------------------------------------
# capturing block inputs / outputs with hooks
# ------------------------------------------------------------------------------------------------
def _run_item(net: nn.Module, item) -> None:
    if callable(item) and not isinstance(item, nn.Module) and not torch.is_tensor(item):
        item(net)
    else:
        _run(net, item)


def _detach(obj):
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_detach(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


def _cat(records: list):
    """Concatenate per-call records along dim 0 of every tensor leaf; non-tensor leaves must agree."""
    first = records[0]
    if torch.is_tensor(first):
        return torch.cat(records, dim=0)
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([r[i] for r in records]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _cat([r[k] for r in records]) for k in first}
    if any(r != first for r in records[1:]):
        raise ValueError("a block's non-tensor argument changed between calibration batches")
    return first


def _index(obj, idx: torch.Tensor):
    if torch.is_tensor(obj):
        return obj[idx.to(obj.device)]
    if isinstance(obj, (tuple, list)):
        return type(obj)(_index(o, idx) for o in obj)
    if isinstance(obj, dict):
        return {k: _index(v, idx) for k, v in obj.items()}
    return obj


def _num_samples(obj) -> int | None:
    if torch.is_tensor(obj):
        return obj.shape[0] if obj.dim() else None
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (tuple, list)) else ()
    for o in items:
        n = _num_samples(o)
        if n is not None:
            return n
    return None


def _tensors(obj) -> list[torch.Tensor]:
    if torch.is_tensor(obj):
        return [obj]
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (tuple, list)) else ()
    return [t for o in items for t in _tensors(o)]


def _qdrop(q, fp, prob: float, gen: torch.Generator):
    """QDrop input mixing: each float element of q replaced by fp's with probability ``prob``."""
    if torch.is_tensor(q):
        if not q.is_floating_point():
            return q
        keep_fp = torch.rand(q.shape, generator=gen).to(q.device) < prob
        return torch.where(keep_fp, fp, q)
    if isinstance(q, (tuple, list)):
        return type(q)(_qdrop(a, b, prob, gen) for a, b in zip(q, fp))
    if isinstance(q, dict):
        return {k: _qdrop(q[k], fp[k], prob, gen) for k in q}
    return q


class _StopForward(Exception):
    """Raised by a capture hook once it has what it needs, to skip the rest of the network."""


@torch.no_grad()
def _capture(net: nn.Module, block: nn.Module, run_batches: Callable[[], Iterable], *, inputs: bool,
             outputs: bool):
    """Run ``net`` on every calibration batch, recording ``block``'s (args, kwargs) and/or output.

    Only the block's first call per batch is recorded; the rest of the network is skipped (``_StopForward``)
    right after the block (or before it when only its inputs are needed)."""
    ins, outs = [], []

    def pre(m, args, kwargs):
        ins.append((_detach(args), _detach(kwargs)))
        if not outputs:
            raise _StopForward

    def post(m, args, out):
        outs.append(_detach(out))
        raise _StopForward

    hooks = []
    if inputs:
        hooks.append(block.register_forward_pre_hook(pre, with_kwargs=True))
    if outputs:
        hooks.append(block.register_forward_hook(post))
    try:
        seen = 0
        for item in run_batches():
            try:
                _run_item(net, item)
            except _StopForward:
                pass
            seen += 1
    finally:
        for h in hooks:
            h.remove()
    if seen == 0:
        raise ValueError("run_batches() yielded no calibration batch")
    if (inputs and len(ins) != seen) or (outputs and len(outs) != seen):
        raise ValueError("a block did not run on every calibration batch (unused module?)")
    return (_cat(ins) if inputs else None), (_cat(outs) if outputs else None)


def _lp(pred, target, p: float) -> torch.Tensor:
    """sum over dim 1 of |pred - target|^p, averaged over the batch and every other dim (summed over outputs)."""
    total = 0.0
    for a, b in zip(_tensors(pred), _tensors(target)):
        d = (a - b).abs().pow(p)
        total = total + (d.sum(dim=1).mean() if d.dim() > 1 else d.mean())
    return total


@torch.no_grad()
def _block_mse(block, args, kwargs, target, n: int, chunk: int = 256) -> float:
    """Mean squared error of the block output vs target over all n cached samples."""
    sq = count = 0.0
    for i in range(0, n, chunk):
        idx = torch.arange(i, min(i + chunk, n))
        out = block(*_index(args, idx), **_index(kwargs, idx))
        for a, b in zip(_tensors(out), _tensors(_index(target, idx))):
            sq += float((a.float() - b.float()).pow(2).sum())
            count += b.numel()
    return sq / max(count, 1)


class _FloatMode:
    """Context: every quantizer inside ``block`` off (weights float, activations float)."""

    def __init__(self, block: nn.Module):
        self.wrappers = list(_wrappers(block).values())
        self.acts = _act_quantizers(block)

    def __enter__(self):
        self.saved_w = [w.w_quant for w in self.wrappers]
        self.saved_modes = [q.mode for q in self.acts]
        for w in self.wrappers:
            w.w_quant = None
        for q in self.acts:
            q.mode = "off"

    def __exit__(self, *exc):
        for w, wq in zip(self.wrappers, self.saved_w):
            w.w_quant = wq
        for q, mode in zip(self.acts, self.saved_modes):
            q.mode = mode


# ------------------------------------------------------------------------------------------------
# the reconstruction
# ------------------------------------------------------------------------------------------------
def reconstruct_blocks(q_net: nn.Module, fp_net: nn.Module, run_batches: Callable[[], Iterable], *,
                       blocks: Sequence[str] | None = None, iters: int = 300, adaround: bool = True,
                       learn_act: bool = False, layer_loss_weight: float = 0.0,
                       layer_loss_exclude_last: bool = False, batch_size: int = 32, p: float = 2.0,
                       lr_v: float = 1e-2, lr_act: float = 4e-4, reg_weight: float = 0.01,
                       beta: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2, qdrop_prob: float = 0.0,
                       block_types: Sequence[str] = DEFAULT_BLOCK_TYPES, seed: int = 0,
                       progress=None) -> dict[str, dict]:
    """BRECQ block reconstruction with AdaRound (and optionally learned activation steps) of ``q_net`` in place.

    For each block B in execution order (see the module docstring for the loss and the references):
    capture B's inputs in ``q_net`` and B's outputs in ``fp_net`` over all calibration batches
    (``run_batches()``), optimise ``iters`` Adam steps on random minibatches of ``batch_size`` cached samples,
    then bake the hard rounding into the quantized layers' float weights (on their quantizer grids).

    Args:
        q_net: a network that went through ``quantize_model`` (optionally ``split_concat_convs`` before it).
        fp_net: its full-precision twin (same block names); not modified.
        run_batches: ``run_batches()`` -> iterable of callables ``item(net)`` or argument tuples/dicts.
        blocks: qualified module names, or None for ``find_blocks(q_net, block_types=...)``.
        iters: optimisation steps per block (reference: 20k; default for small CPU models).
        adaround: learn the rounding V of every quantized weight in the block (else weights stay as they are).
        learn_act: learn the step sizes of the block's activation quantizers (must be in "quant" mode).
        layer_loss_weight: eta of the per-layer output term (0: pure block loss).
        layer_loss_exclude_last: leave the last executed quantized layer of the block out of that term.
        batch_size: samples per optimisation step. p: exponent of the L_p reconstruction loss.
        lr_v, lr_act: Adam learning rates of V and of the activation steps (the latter cosine-decayed to 0);
            lr_v 1e-2 suits a few hundred iterations, the reference's 1e-3 its 20k (see the module docstring).
        reg_weight, beta, warmup: lambda, (beta_start, beta_end) and the warm-up fraction of the regulariser.
        qdrop_prob: QDrop probability of feeding an input element's full-precision value.
        seed: minibatch / QDrop draws. progress: ``progress(desc, total)`` -> bar with update/close, or None.

    Returns ``{block name: stats}`` in execution order (stats as in the module docstring).
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1; got {iters}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if not adaround and not learn_act:
        raise ValueError("nothing to learn: enable adaround and/or learn_act")
    if layer_loss_weight < 0 or reg_weight < 0 or not 0.0 <= qdrop_prob <= 1.0 or not 0.0 <= warmup < 1.0 or p <= 0:
        raise ValueError("need layer_loss_weight >= 0, reg_weight >= 0, 0 <= qdrop_prob <= 1, 0 <= warmup < 1 "
                         "and p > 0")
    if not quant_layers(q_net):
        raise ValueError(f"{type(q_net).__name__} has no quantized layer: run quantize_model first")
    if learn_act and not any(q.mode == "quant" for q in _act_quantizers(q_net)):
        raise ValueError("learn_act needs activation quantizers in 'quant' mode (calibrate, then set_act_mode)")
    if blocks is None:
        blocks = find_blocks(q_net, block_types=block_types, learn_act=learn_act)
    blocks = _check_blocks(q_net, fp_net, blocks)

    training = (q_net.training, fp_net.training)
    q_net.eval()
    fp_net.eval()
    requires = {id(prm): prm.requires_grad for prm in q_net.parameters()}
    for prm in q_net.parameters():
        prm.requires_grad_(False)
    try:
        order = _execution_order(q_net, blocks, run_batches)
        results = {}
        for k, name in enumerate(order):
            stats = _reconstruct_one(
                q_net, fp_net, name, run_batches, iters=iters, adaround=adaround, learn_act=learn_act,
                layer_loss_weight=layer_loss_weight, layer_loss_exclude_last=layer_loss_exclude_last,
                batch_size=batch_size, p=p, lr_v=lr_v, lr_act=lr_act, reg_weight=reg_weight, beta=beta,
                warmup=warmup, qdrop_prob=qdrop_prob, seed=seed + 1000 * k, progress=progress)
            if stats is not None:
                results[name] = stats
        return results
    finally:
        for prm in q_net.parameters():
            prm.requires_grad_(requires.get(id(prm), False))
        q_net.train(training[0])
        fp_net.train(training[1])


@torch.no_grad()
def _execution_order(q_net: nn.Module, blocks: list[str], run_batches) -> list[str]:
    """The blocks sorted by their first call while the network runs on the first calibration batch."""
    seen: list[str] = []
    hooks = [q_net.get_submodule(b).register_forward_pre_hook(
        lambda m, a, b=b: seen.append(b) if b not in seen else None) for b in blocks]
    try:
        for item in run_batches():
            _run_item(q_net, item)
            break
        else:
            raise ValueError("run_batches() yielded no calibration batch")
    finally:
        for h in hooks:
            h.remove()
    missing = [b for b in blocks if b not in seen]
    if missing:
        raise ValueError(f"blocks never ran on a calibration batch: {', '.join(missing)}")
    return seen


def _reconstruct_one(q_net, fp_net, name, run_batches, *, iters, adaround, learn_act, layer_loss_weight,
                     layer_loss_exclude_last, batch_size, p, lr_v, lr_act, reg_weight, beta, warmup, qdrop_prob,
                     seed, progress):
    t0 = time.perf_counter()
    block = q_net.get_submodule(name)
    fp_block = fp_net.get_submodule(name)
    wrappers = {n: w for n, w in _wrappers(block).items() if w.w_quant is not None} if adaround else {}
    acts = [q for q in _act_quantizers(block) if q.mode == "quant"] if learn_act else []
    if learn_act and any(q.num_steps is not None for q in acts):
        raise ValueError(f"block {name!r} has per-step activation sets; learn_act handles single sets only")
    if not wrappers and not acts:
        return None
    need_fp_in = layer_loss_weight > 0 or qdrop_prob > 0
    (q_args, q_kwargs), _ = _capture(q_net, block, run_batches, inputs=True, outputs=False)
    fp_in, target = _capture(fp_net, fp_block, run_batches, inputs=need_fp_in, outputs=True)
    n = _num_samples((q_args, q_kwargs))
    if n is None:
        raise ValueError(f"block {name!r} takes no batched tensor input")
    mse_before = _block_mse(block, q_args, q_kwargs, target, n)

    ada = {}
    for lname, w in wrappers.items():
        ada[lname] = AdaRoundQuantizer(w.w_quant, w.layer.weight)
    saved_wq = {lname: w.w_quant for lname, w in wrappers.items()}
    act_state = [(q, q.scale.requires_grad) for q in acts]
    for lname, w in wrappers.items():
        w.w_quant = ada[lname]
    opt_v = torch.optim.Adam([a.v for a in ada.values()], lr=lr_v) if ada else None
    opt_a = sched_a = None
    if acts:
        for q in acts:
            q.scale.requires_grad_(True)
        opt_a = torch.optim.Adam([q.scale for q in acts], lr=lr_act)
        sched_a = torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, T_max=iters, eta_min=0.0)

    layer_names = list(_wrappers(block))
    layer_mods = _wrappers(block)
    q_outs: dict[str, torch.Tensor] = {}
    hooks = []
    if layer_loss_weight > 0:
        hooks = [layer_mods[ln].register_forward_hook(lambda m, a, o, ln=ln: q_outs.__setitem__(ln, o))
                 for ln in layer_names]
    gen = torch.Generator().manual_seed(seed)
    bsz = min(batch_size, n)
    bar = open_bar(progress, f"reconstruct {name}", iters)
    losses = []
    done = False
    try:
        for it in range(iters):
            idx = torch.randperm(n, generator=gen)[:bsz]
            args, kwargs = _index(q_args, idx), _index(q_kwargs, idx)
            if qdrop_prob > 0:
                fa, fk = _index(fp_in[0], idx), _index(fp_in[1], idx)
                args, kwargs = _qdrop(args, fa, qdrop_prob, gen), _qdrop(kwargs, fk, qdrop_prob, gen)
            q_outs.clear()
            out = block(*args, **kwargs)
            loss = _lp(out, _index(target, idx), p)
            if layer_loss_weight > 0:
                executed = list(q_outs)  # insertion order = execution order
                got = {ln: q_outs[ln] for ln in executed}
                q_outs.clear()
                with torch.no_grad(), _FloatMode(block):
                    block(*_index(fp_in[0], idx), **_index(fp_in[1], idx))
                fp_outs = dict(q_outs)
                q_outs.clear()
                use = executed[:-1] if layer_loss_exclude_last else executed
                if use:
                    loss = loss + layer_loss_weight * sum(_lp(got[ln], fp_outs[ln].detach(), p) for ln in use)
            if ada and reg_weight > 0 and it >= warmup * iters:
                b = adaround_beta(it, iters, beta=beta, warmup=warmup)
                loss = loss + reg_weight * sum(a.regularizer(b) for a in ada.values())
            for opt in (opt_v, opt_a):
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in (opt_v, opt_a):
                if opt is not None:
                    opt.step()
            if sched_a is not None:
                sched_a.step()
            if acts:
                with torch.no_grad():
                    for q in acts:
                        q.scale.clamp_(min=_EPS)
            losses.append(float(loss.detach()))
            bar.update(1)
        done = True
    finally:
        bar.close()
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for lname, w in wrappers.items():
                if done:  # bake the hard rounding into the float weight (on the quantizer's grid)
                    w.layer.weight.copy_(ada[lname].hard_weight())
                w.w_quant = saved_wq[lname]
        for q, req in act_state:
            q.scale.requires_grad_(req)
    mse_after = _block_mse(block, q_args, q_kwargs, target, n)
    qualified = [f"{name}.{ln}" if ln else name for ln in (list(wrappers) if wrappers else layer_names)]
    return {"layers": qualified, "iters": iters, "samples": n,
            "mse_before": mse_before, "mse_after": mse_after, "loss_first": losses[0] if losses else math.nan,
            "loss_last": losses[-1] if losses else math.nan, "seconds": time.perf_counter() - t0}
