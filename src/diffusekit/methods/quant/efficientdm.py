"""EfficientDM (He, Liu, Xu, Zhuang & Zhuang, ICLR 2024, arXiv 2310.03270): quantization-aware low-rank
fine-tuning of a diffusion model, distilled from the full-precision model without training data.

Pipeline (the reference ``quant_scripts/train_efficientdm.py``):

1. **PTQ init.** ``quantize_model`` with per-channel weight ranges from the MSE search (``weight_method="mse"``),
   per-tensor activations, first and last layers at 8 bits, and one activation set per sampling step
   (TALSQ, below) calibrated on the fp model's own DDIM trajectories (``traj``) at that step.
2. **QALoRA** (Sec. 3.2). Every quantized layer gets a low-rank branch; the forward pass quantizes the merged
   weight, so the fine-tuned model stays a low-bit model:

       y = layer(Q_a(x), Q_w(W + B A)),  A (r, C_in k_h k_w) Kaiming-uniform,  B (C_out, r) = 0,

   (for a conv, A is a k x k conv to r channels and B a 1 x 1 conv, i.e. the same matrix product). The
   gradient reaches A, B and Delta_w through the straight-through estimator. After training the branch is
   merged and re-quantized, W <- Q_w(W + B A), so every stored weight lies on its quantizer's grid and the
   network is plain ``quantize_model`` structure again (``merge_qalora``).
3. **Scale-aware LoRA learning rate** (Sec. 3.2): layer l's LoRA parameters use lr_l = mean(Delta_w,l) * c
   (reference: c = 1/2500 with 16k updates): an update must be commensurate with the layer's quantization
   step to move a weight across a rounding boundary, and Delta_w differs by orders of magnitude across layers,
   so one global lr is too large for some layers and too small for others.
4. **TALSQ** (temporal activation LSQ, Sec. 3.3): each activation quantizer holds (Delta, z) per sampling step
   (``act_steps = S``, chosen from the call's t by ``QuantDenoiser``), and Delta is learned with LSQ
   (Esser et al. 2020, arXiv 1902.08153; lr 5e-4). Our ``UniformQuantizer`` keeps z fixed (the reference also
   learns z).
5. **Data-free distillation** (Sec. 3.4): per epoch the fp teacher runs DDIM (eta = 1 in the reference) from
   fresh noise with random class labels; at every step, on that step's x_t, one AdamW update of

       L = sum (f_q(x_t, t) - f_fp(x_t, t))^2          (network outputs, e.g. eps; sum over the batch)

   and the trajectory advances with the teacher's prediction. Trainable: A, B, Delta_w (lr 1e-6),
   Delta_act; everything else frozen; linear lr decay to 0, no warm-up.

The reference's CFG-combined loss (ImageNet LDM) does not apply to our class-conditional digits net without
guidance; the loss uses the conditional prediction the sampler uses.

Measured on digits_unet (64 fp DDIM-20 calibration trajectories, 16 per step for the ranges; error of x0_hat
relative to fp and eps MSE, averaged over the 20 steps of 32 fresh trajectories; 1 thread on a loaded shared
2-core machine, so seconds are upper bounds):

    W4A8  min/max 0.650 / 0.00280 (5 s);  EfficientDM quick (8 epochs = 160 updates, rank 4) 0.321 / 0.00094
          (116 s: calibration 19 s, fine-tuning 88 s)
    W4A4  min/max 12.1 / 0.430 (9 s);  PTQ init alone 3.03 / 0.049;  quick 2.60 / 0.036 (139 s);
          24 epochs 2.43 / 0.031 (220 s);  ablations at quick: global lr 2.58 / 0.036 (no measurable
          difference at this budget), one activation set instead of TALSQ 2.80 / 0.040.

Most of the gain over min/max comes from the PTQ init (MSE ranges, per-step activation sets, 8-bit first and
last layers); the distillation lowers the eps error by a further 25-35 % and keeps improving with updates.
"""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...core.denoiser import Denoiser, NetworkDenoiser
from ...core.noise import prior_sample
from ...core.predictions import x0_from_prediction
from .calibration import Trajectories
from .modules import act_quantizers, calibrate, quant_layers, quantize_model, set_act_mode
from .pipeline import QuantDenoiser, QuantResult, open_bar

__all__ = ["LoRADelta", "add_qalora", "merge_qalora", "qalora_parameters", "lora_learning_rates",
           "talsq_calibrate", "distill_data_free", "quantize_efficientdm"]


class LoRADelta(nn.Module):
    """Weight parametrization W -> W + B A (Hu et al. 2021, arXiv 2106.09685), reshaped to W's shape.

    A (r, fan_in) with fan_in = C_in k_h k_w (Kaiming-uniform, as ``nn.Linear``'s default init), B (C_out, r)
    zero, so the branch starts at 0. Registered on a quantized layer's float weight by ``add_qalora``, so the
    wrapper's forward computes Q_w(W + B A) (QALoRA).
    """

    def __init__(self, weight: torch.Tensor, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        out_ch, fan_in = weight.shape[0], weight[0].numel()
        a = torch.empty(rank, fan_in)
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) bound, as nn.Linear
        a.uniform_(-bound, bound, generator=generator)
        self.A = nn.Parameter(a.to(weight))
        self.B = nn.Parameter(torch.zeros(out_ch, rank).to(weight))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (self.B @ self.A).reshape(w.shape)


def add_qalora(net: nn.Module, rank: int, *, seed: int = 0) -> dict[str, LoRADelta]:
    """Give every weight-quantized layer of a ``quantize_model``-ed ``net`` a QALoRA branch (in place):
    its forward becomes layer(Q_a(x), Q_w(W + B A)). Returns {layer name: LoRADelta}."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1; got {rank!r}")
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for name, m in quant_layers(net).items():
        if m.w_quant is None:
            continue
        if parametrize.is_parametrized(m.layer, "weight"):
            raise ValueError(f"layer {name} already has a weight parametrization (QALoRA added twice?)")
        w = m.layer.weight.detach()
        delta = LoRADelta(w, min(rank, w.shape[0], w[0].numel()), g)
        parametrize.register_parametrization(m.layer, "weight", delta)
        out[name] = delta
    if not out:
        raise ValueError("the network has no weight-quantized layer to give a QALoRA branch")
    return out


def qalora_parameters(net: nn.Module) -> dict[str, LoRADelta]:
    """The QALoRA branches currently registered in ``net`` by layer name."""
    return {name: m.layer.parametrizations.weight[0] for name, m in quant_layers(net).items()
            if parametrize.is_parametrized(m.layer, "weight") and isinstance(m.layer.parametrizations.weight[0],
                                                                             LoRADelta)}


@torch.no_grad()
def merge_qalora(net: nn.Module) -> list[str]:
    """Merge every QALoRA branch and re-quantize: W <- Q_w(W + B A) (in place), leaving a plain fake-quant layer
    whose float weight lies on its quantizer's grid, so the forward is unchanged: Q_w(Q_w(W + B A)) =
    Q_w(W + B A). Returns the merged layer names."""
    merged = []
    for name in qalora_parameters(net):
        m = quant_layers(net)[name]
        parametrize.remove_parametrizations(m.layer, "weight", leave_parametrized=True)
        m.layer.weight.copy_(m.w_quant(m.layer.weight))
        merged.append(name)
    return merged


def lora_learning_rates(net: nn.Module, factor: float, *, scale_aware: bool = True) -> dict[str, float]:
    """Per-layer LoRA learning rates: lr_l = mean(Delta_w,l) * factor (EfficientDM's scale-aware rule), or, with
    ``scale_aware=False``, the mean of those over the layers for every layer (the global-lr ablation)."""
    if not factor > 0:
        raise ValueError(f"the LoRA learning-rate factor must be > 0; got {factor!r}")
    lrs = {name: float(quant_layers(net)[name].w_quant.scale.detach().mean()) * factor
           for name in qalora_parameters(net)}
    if not lrs:
        raise ValueError("the network has no QALoRA branch: call add_qalora first")
    if not scale_aware:
        mean = sum(lrs.values()) / len(lrs)
        lrs = dict.fromkeys(lrs, mean)
    return lrs


def _run_net(qden: NetworkDenoiser):
    def run(net, batch):
        x, t, cond = batch
        net(*qden.net_inputs(x, t), **cond)
    return run


def talsq_calibrate(qden: NetworkDenoiser, traj: Trajectories, *, per_step: int | None = None,
                    method: str = "mse", batch_size: int = 256) -> None:
    """Initialise the activation ranges of ``qden.net`` from the fp trajectories. With per-step sets
    (``act_steps = traj.num_steps``, TALSQ) set k comes from the first ``per_step`` trajectories at recorded
    step k; with one set per quantizer, from the same samples pooled over all steps. ``method``: range search
    (EfficientDM's PTQ init uses the MSE search)."""
    s = traj.num_steps
    per_step = traj.num_samples if per_step is None else int(per_step)
    if not 1 <= per_step <= traj.num_samples:
        raise ValueError(f"per_step must be in 1..{traj.num_samples}; got {per_step}")
    steps = {q.num_steps for q in act_quantizers(qden.net)}
    if steps not in ({s}, {None}):
        raise ValueError(f"every activation quantizer needs {s} per-step sets (one per recorded step) or one set")

    def chunks(k):
        x = traj.x[k, :per_step]
        for i in range(0, per_step, batch_size):
            xb = x[i:i + batch_size]
            yield xb, traj.t[k].expand(xb.shape[0]), {key: v[i:min(i + batch_size, per_step)]
                                                       for key, v in traj.cond.items()}

    run = _run_net(qden)
    if steps == {s}:
        for k in range(s):
            calibrate(qden.net, lambda k=k: chunks(k), method, step=k, run=run)
    else:
        calibrate(qden.net, lambda: (b for k in range(s) for b in chunks(k)), method, run=run)


class _DistillStep(Denoiser):
    """The fp teacher as a Denoiser for the sampler; each call also makes one student update on the same
    x_t (EfficientDM's data-free distillation) and returns the teacher's x0_hat, so the trajectory is the
    teacher's own."""

    def __init__(self, teacher: NetworkDenoiser, student: QuantDenoiser, optimizer, scheduler, bar, losses: list):
        super().__init__(teacher.schedule)
        self.teacher, self.student = teacher, student
        self.optimizer, self.scheduler, self.bar, self.losses = optimizer, scheduler, bar, losses

    def denoise(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        with torch.no_grad():
            target = self.teacher.raw(x, t, **cond)
        with torch.enable_grad():
            out = self.student.raw(x, t, **cond)
            loss = (out - target).pow(2).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
        self.losses.append(loss.item())
        self.bar.update(1)
        return x0_from_prediction(target, x, t, self.schedule, self.teacher.prediction,
                                  sigma_data=self.teacher.sigma_data)


def distill_data_free(teacher: NetworkDenoiser, student: QuantDenoiser, ts: torch.Tensor, shape, *, epochs: int,
                      batch_size: int, lora_lrs: dict[str, float], act_lr: float = 5e-4,
                      weight_scale_lr: float = 1e-6, eta: float = 1.0, num_classes: int | None = None,
                      seed: int = 0, progress=None) -> list[float]:
    """EfficientDM's data-free distillation (arXiv 2310.03270, Sec. 3.4): ``epochs`` teacher DDIM runs (grid
    ``ts``, ``eta``) from fresh noise (batch ``batch_size``, random labels when ``num_classes``), one AdamW
    update of L = sum (f_q(x_t, t) - f_fp(x_t, t))^2 per step, linear lr decay to 0. Parameter groups: each
    QALoRA branch at its ``lora_lrs`` entry, the weight quantizers' Delta at ``weight_scale_lr``, the activation
    quantizers' Delta (LSQ) at ``act_lr``; all other parameters frozen. Returns the loss of every update."""
    from ...samplers import sample_ddim
    net = student.net
    branches = qalora_parameters(net)
    for p in net.parameters():
        p.requires_grad_(False)
    groups = []
    for name, delta in branches.items():
        for p in delta.parameters():
            p.requires_grad_(True)
        groups.append({"params": list(delta.parameters()), "lr": lora_lrs[name]})
    wq = [m.w_quant.scale for m in quant_layers(net).values() if m.w_quant is not None and m.w_quant.learnable]
    aq = [q.scale for q in act_quantizers(net) if q.learnable]
    for group, lr in ((wq, weight_scale_lr), (aq, act_lr)):
        if group and lr > 0:
            for p in group:
                p.requires_grad_(True)
            groups.append({"params": group, "lr": lr})
    if not groups:
        raise ValueError("nothing to train: no QALoRA branch and no learnable quantizer")
    updates = epochs * (len(ts) - 1)
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: max(0.0, 1.0 - k / updates))
    g = torch.Generator().manual_seed(int(seed))
    losses: list[float] = []
    bar = open_bar(progress, "EfficientDM distillation", updates)
    try:
        step = _DistillStep(teacher, student, optimizer, scheduler, bar, losses)
        for _ in range(epochs):
            x = prior_sample(teacher.schedule, (batch_size, *shape), g)
            cond = {} if num_classes is None else {"class_labels": torch.randint(0, num_classes, (batch_size,),
                                                                                 generator=g)}
            sample_ddim(step, x, ts, eta=eta, cond=cond, generator=g)
    finally:
        bar.close()
        for p in net.parameters():
            p.requires_grad_(False)
    return losses


def quantize_efficientdm(denoiser: NetworkDenoiser, wbits: int, abits: int, *, traj: Trajectories, seed: int = 0,
                         quick: bool = False, progress=None, rank: int = 4, epochs: int | None = None,
                         batch_size: int = 32, lora_lr_factor: float = 0.05, scale_aware_lr: bool = True,
                         talsq: bool = True, act_lr: float = 5e-4, weight_scale_lr: float = 1e-6, eta: float = 1.0,
                         first_last_bits: int | None = 8, weight_method: str = "mse", act_method: str = "mse",
                         calib_per_step: int = 16, attention: bool = False) -> QuantResult:
    """EfficientDM (He et al., ICLR 2024, arXiv 2310.03270): PTQ init, then QALoRA + TALSQ fine-tuning by
    data-free distillation from the fp model (see the module docstring for every equation).

    Contract: ``quantize_<method>(denoiser, wbits, abits, *, traj, seed, quick, progress) -> QuantResult``
    (``pipeline``); the input denoiser is untouched. ``traj`` (the fp model's DDIM trajectories) calibrates
    the per-step activation sets and fixes the distillation grid (its recorded times, then t = 0).
    Options: ``rank`` (reference 32; 4 for small nets), ``epochs`` of teacher trajectories (one update per
    step; default 40, ``quick`` 8), ``batch_size``, ``lora_lr_factor`` c in lr_l = mean(Delta_w,l) c (reference
    1/2500 over 16k updates; larger for our few hundred), ``scale_aware_lr`` (False: the global-lr ablation),
    ``talsq`` (False: one activation set for all steps, the ablation), ``act_lr`` / ``weight_scale_lr``,
    ``eta`` of the teacher DDIM, ``first_last_bits`` (8 as the reference; None: same as the rest),
    ``weight_method`` / ``act_method`` range searches of the PTQ init, ``calib_per_step`` trajectories per
    step, ``attention``: also quantize the attention matmuls (``quantize_attention``, per-step sets, LSQ).

    The returned net is ``quantize_model(net, wbits, abits, **info["structure"]["quantize_model"])`` (plus
    ``quantize_attention`` when asked) with the LoRA merged into each weight (on its quantizer's grid).
    """
    if not isinstance(traj, Trajectories):
        raise ValueError("traj must be calibration.Trajectories recorded from the fp model")
    epochs = (8 if quick else 40) if epochs is None else int(epochs)
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1; got {epochs} and {batch_size}")
    t0 = time.perf_counter()
    s = traj.num_steps
    net = copy.deepcopy(denoiser.net).eval()
    qkw = {"weight_method": weight_method, "act_steps": s if talsq else None, "learnable": True}
    if first_last_bits is not None:
        qkw["first_last_bits"] = first_last_bits
    quantize_model(net, wbits, abits, **qkw)
    akw = None
    if attention:
        from .attention import quantize_attention

        akw = {"act_steps": s if talsq else None, "learnable": True}
        quantize_attention(net, abits, **akw)
    step_times = traj.t.clone() if talsq else None
    qden = QuantDenoiser(net, denoiser, step_times=step_times)
    talsq_calibrate(qden, traj, per_step=min(calib_per_step, traj.num_samples), method=act_method)
    calib_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    add_qalora(net, rank, seed=seed)
    lrs = lora_learning_rates(net, lora_lr_factor, scale_aware=scale_aware_lr)
    ts = traj.t.clone() if float(traj.t[-1]) == 0.0 else torch.cat([traj.t, traj.t.new_zeros(1)])
    shape = tuple(traj.x.shape[2:])  # (S, N, *sample shape)
    num_classes = denoiser.num_classes if "class_labels" in traj.cond else None
    losses = distill_data_free(denoiser, qden, ts, shape, epochs=epochs, batch_size=batch_size, lora_lrs=lrs,
                               act_lr=act_lr, weight_scale_lr=weight_scale_lr, eta=eta, num_classes=num_classes,
                               seed=seed, progress=progress)
    merged = merge_qalora(net)
    set_act_mode(net, "quant")
    net.eval()
    per_epoch = len(ts) - 1
    info = {
        "structure": {"split": [], "quantize_model": qkw, "attention": akw, "temporal_cache": False},
        "calibration": f"per-step ({'TALSQ' if talsq else 'one set'}) {act_method} ranges from {calib_per_step} fp "
                       f"DDIM trajectories per step; weights {weight_method}",
        "rank": rank, "updates": len(losses), "epochs": epochs, "merged_layers": len(merged),
        "lora_lr": {"factor": lora_lr_factor, "scale_aware": scale_aware_lr, "min": min(lrs.values()),
                    "max": max(lrs.values())},
        "loss_first_epoch": sum(losses[:per_epoch]) / per_epoch,
        "loss_last_epoch": sum(losses[-per_epoch:]) / per_epoch,
    }
    return QuantResult(qden, "efficientdm", wbits, abits, calib_seconds=calib_seconds,
                       finetune_seconds=time.perf_counter() - t1, info=info)

