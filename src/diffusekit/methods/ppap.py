"""PPAP: practical plug-and-play guidance with multiple parameter-efficient, data-free experts.

Go et al. 2023, "Towards Practical Plug-and-Play Diffusion Models" (CVPR 2023, arXiv 2212.05973):

* **Multi-expert by noise range.** The noise range [t_min, t_max] is split into N contiguous intervals
  (:func:`partition_times`, equal in t as in the paper, or equal in logSNR); expert i is a classifier
  specialised to x_t with t in its interval. :class:`ExpertRouter` dispatches each sample to the expert owning
  its t and has the ``classifier(x_t, t) -> logits`` signature of
  :class:`~diffusekit.methods.classifier_guidance.ClassifierGuidedDenoiser`.
* **Parameter-efficient experts.** Each expert is the frozen clean classifier (the "backbone") with LoRA
  adapters on its conv and linear layers (except the output head) plus its own trainable biases
  (:func:`lora_expert`); the frozen weights are the *same* Parameter objects as the backbone's, so N experts
  cost N x (adapter + biases) extra parameters.
* **Data-free transfer** (:func:`distill_experts`). No labels: x0 are samples of the (unconditional) diffusion
  model itself (:func:`generate_distillation_data`); the teacher is the clean classifier on x0 with
  p_T = softmax(logits_T / temperature) (temperature 0.25 in the paper); expert i is trained on
  x_t = alpha_t x0 + sigma_t eps, t ~ U(interval i), with KL(p_T || softmax(student(x_t))). Experts are trained
  sequentially from low to high noise, each starting from the previous expert's adapter (as in the paper).

Baselines for comparison (with labels): :func:`train_full_experts` (N fully fine-tuned copies of the
classifier, one per interval, cross-entropy on labelled data), and the single noise-aware classifier
``train_noisy_classifier`` of :mod:`classifier_guidance`. :func:`clean_as_noisy` wraps a clean classifier with the
``(x, t)`` signature (ignoring t) to use it as-is on x_t.

Implementation is original and small-scale (the reference uses ResNet50/DeiT, BN tuning, rank 16, alpha 8);
here the digits classifier has no BN, so the trainable set is LoRA + biases.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core import make_grid, prior_sample
from ..core.schedules import Schedule
from ..samplers.baseline import sample_ddim

__all__ = [
    "LoRAConv2d", "LoRALinear", "lora_expert", "trainable_parameters", "count_parameters", "partition_times",
    "ExpertRouter", "clean_as_noisy", "generate_distillation_data", "distill_experts", "train_full_experts",
]


# ---------------------------------------------------------------- LoRA layers

class LoRAConv2d(nn.Module):
    """y = base(x) + (alpha / rank) * up(down(x)), base frozen; down has base's kernel/stride/padding (no bias),
    up is a 1x1 conv initialised to zero (so the expert starts equal to the backbone)."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float):
        super().__init__()
        if base.groups != 1:
            raise ValueError("LoRAConv2d supports groups=1 only")
        self.base = base
        self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, stride=base.stride, padding=base.padding,
                              dilation=base.dilation, bias=False)
        self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.scaling = float(alpha) / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * self.up(self.down(x))


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / rank) * up(down(x)), base frozen, up initialised to zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.scaling = float(alpha) / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * self.up(self.down(x))


def _check_pos_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def lora_expert(backbone: nn.Module, *, rank: int = 4, alpha: float = 4.0, train_bias: bool = True,
                skip: Sequence[str] = ("head",)) -> nn.Module:
    """A PPAP expert: a structural copy of ``backbone`` whose Conv2d/Linear layers (except modules named in
    ``skip``, by default the output head) carry LoRA adapters of ``rank``. All weights of the copy are the
    backbone's own (shared, frozen) Parameter objects, except: adapter weights (trainable), biases (cloned and
    trainable when ``train_bias``; the skipped layers keep the shared frozen bias), and normalisation affine
    parameters (cloned, trainable). The backbone itself is set to requires_grad=False. Returned in eval mode.
    """
    _check_pos_int("rank", rank)
    for p in backbone.parameters():
        p.requires_grad_(False)
    expert = copy.deepcopy(backbone)
    # tie all parameters back to the backbone's (deepcopy made copies)
    src = dict(backbone.named_parameters())
    for name, _ in list(expert.named_parameters()):
        mod_name, _, pname = name.rpartition(".")
        mod = expert.get_submodule(mod_name) if mod_name else expert
        setattr(mod, pname, src[name])
    skip = set(skip)

    def convert(parent: nn.Module, prefix: str):
        for child_name, child in list(parent.named_children()):
            full = f"{prefix}{child_name}"
            if full in skip:
                continue
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                if train_bias and child.bias is not None:
                    child.bias = nn.Parameter(child.bias.detach().clone())
                wrapper = LoRAConv2d(child, rank, alpha) if isinstance(child, nn.Conv2d) else \
                    LoRALinear(child, rank, alpha)
                setattr(parent, child_name, wrapper)
            elif isinstance(child, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
                if child.weight is not None:
                    child.weight = nn.Parameter(child.weight.detach().clone())
                    child.bias = nn.Parameter(child.bias.detach().clone())
            else:
                convert(child, full + ".")

    convert(expert, "")
    return expert.eval()


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def count_parameters(module: nn.Module, *, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------- routing

def partition_times(schedule: Schedule, n: int, *, by: str = "time") -> torch.Tensor:
    """N + 1 increasing edges t_min = e_0 < ... < e_N = t_max (float64): equal widths in t (``by="time"``, the
    paper's choice) or in logSNR lambda(t) (``by="logsnr"``)."""
    _check_pos_int("n", n)
    lo, hi = float(schedule.t_min), float(schedule.t_max)
    if by == "time":
        return torch.linspace(lo, hi, n + 1, dtype=torch.float64)
    if by == "logsnr":
        lam = schedule.lam(torch.tensor([lo, hi], dtype=torch.float64))
        edges = schedule.t_of_lam(torch.linspace(float(lam[0]), float(lam[1]), n + 1, dtype=torch.float64))
        edges = edges.to(torch.float64).clone()
        edges[0], edges[-1] = lo, hi
        return edges
    raise ValueError(f"by must be 'time' or 'logsnr', got {by!r}")


class ExpertRouter(nn.Module):
    """classifier(x_t, t) -> logits dispatching each sample to expert i with edges[i] <= t < edges[i+1]
    (t below edges[0] goes to expert 0, t >= edges[-1] to expert N-1). Experts are called as expert(x)
    (time-agnostic, each owns its range) unless ``time_input=True``, then expert(x, t)."""

    def __init__(self, experts: Sequence[nn.Module], edges, *, time_input: bool = False):
        super().__init__()
        edges = torch.as_tensor(edges, dtype=torch.float64)
        if edges.ndim != 1 or edges.numel() != len(experts) + 1 or len(experts) < 1:
            raise ValueError(f"need len(edges) == len(experts) + 1 >= 2; got {edges.numel()} edges, "
                             f"{len(experts)} experts")
        if not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError("edges must be strictly increasing")
        self.experts = nn.ModuleList(experts)
        self.register_buffer("edges", edges)
        self.time_input = time_input

    def expert_index(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=self.edges.device)
        idx = torch.searchsorted(self.edges[1:-1].contiguous(), t.reshape(-1).contiguous(), right=True)
        return idx.clamp(0, len(self.experts) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        idx = self.expert_index(t).to(x.device)
        out = None
        for i in idx.unique().tolist():
            m = idx == i
            xi = x[m]
            li = self.experts[i](xi, t[m.to(t.device)]) if self.time_input else self.experts[i](xi)
            if out is None:
                out = li.new_zeros((x.shape[0], li.shape[1]))
            out = out.index_put((m.nonzero().squeeze(1),), li)  # differentiable scatter
        return out


def clean_as_noisy(classifier: Callable) -> Callable:
    """Wrap a clean classifier f(x) as f(x, t) (t ignored) for use on x_t as-is."""

    def fn(x, t):
        return classifier(x)

    return fn


# ---------------------------------------------------------------- training

def generate_distillation_data(denoiser, n: int, *, steps: int = 10, seed: int = 0, batch_size: int = 500,
                               cond: dict | Callable | None = None) -> torch.Tensor:
    """n unlabeled x0 samples (clipped to [-1, 1]) of ``denoiser`` by DDIM on a trailing grid, sampled in batches.
    ``cond``: conditioning kwargs for the denoiser (e.g. {"class_labels": null}), or a function batch_size -> dict;
    by default, if the denoiser has ``null_class``, the unconditional model (class_labels = null_class)."""
    _check_pos_int("n", n)
    schedule = denoiser.schedule
    gen = torch.Generator().manual_seed(int(seed))
    ts = make_grid("trailing", schedule, steps)
    out = []
    with torch.no_grad():
        for s in range(0, n, batch_size):
            b = min(batch_size, n - s)
            if callable(cond):
                c = cond(b)
            elif cond is not None:
                c = cond
            elif hasattr(denoiser, "null_class"):
                c = {"class_labels": torch.full((b,), denoiser.null_class, dtype=torch.long)}
            else:
                c = {}
            x_T = prior_sample(schedule, (b, 1, 8, 8), gen)
            out.append(sample_ddim(denoiser, x_T, ts, cond=c).clamp(-1, 1))
    return torch.cat(out)


def _train_range(model: nn.Module, loss_fn: Callable, x: torch.Tensor, schedule: Schedule, lo: float, hi: float,
                 *, steps: int, batch_size: int, lr: float, weight_decay: float, gen: torch.Generator):
    params = trainable_parameters(model)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / steps)))
    model.eval()  # no dropout; the digits classifier has no BN
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=gen)
        t = lo + (hi - lo) * torch.rand(len(idx), generator=gen, dtype=torch.float64)
        x_t = schedule.add_noise(x[idx], t, torch.randn(x[idx].shape, generator=gen)).float()
        loss = loss_fn(model(x_t), idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def distill_experts(backbone: nn.Module, x0: torch.Tensor, schedule: Schedule, edges, *, steps: int, seed: int = 0,
                    teacher: Callable | None = None, temperature: float = 0.25, rank: int = 4, alpha: float = 4.0,
                    batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 0.0,
                    sequential: bool = True) -> ExpertRouter:
    """PPAP data-free transfer: one LoRA expert (:func:`lora_expert` of the frozen ``backbone``) per interval of
    ``edges``, trained on unlabeled x0 (N, C, H, W) with KL(p_T || p_student(x_t)), p_T = softmax(teacher(x0) /
    temperature) (teacher defaults to the backbone itself), t ~ U[edges[i], edges[i+1]], ``steps`` AdamW steps per
    expert (cosine lr). ``sequential``: expert i starts from expert i-1's trained adapter and biases. Deterministic
    given ``seed``; returns an :class:`ExpertRouter` in eval mode."""
    _check_pos_int("steps", steps)
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    edges = torch.as_tensor(edges, dtype=torch.float64)
    teacher = teacher if teacher is not None else backbone
    x0 = x0.detach().float()
    was_training = getattr(teacher, "training", False)
    if isinstance(teacher, nn.Module):
        teacher.eval()
    with torch.no_grad():
        p_t = F.softmax(teacher(x0).float() / temperature, dim=-1)
    if isinstance(teacher, nn.Module):
        teacher.train(was_training)
    gen = torch.Generator().manual_seed(int(seed))

    def loss_fn(logits, idx):
        return F.kl_div(F.log_softmax(logits, dim=-1), p_t[idx], reduction="batchmean")

    experts = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for i in range(len(edges) - 1):
            e = lora_expert(backbone, rank=rank, alpha=alpha)
            if sequential and experts:
                prev = {k: v for k, v in experts[-1].named_parameters() if v.requires_grad}
                with torch.no_grad():
                    for k, v in e.named_parameters():
                        if v.requires_grad:
                            v.copy_(prev[k])
            experts.append(_train_range(e, loss_fn, x0, schedule, float(edges[i]), float(edges[i + 1]), steps=steps,
                                        batch_size=batch_size, lr=lr, weight_decay=weight_decay, gen=gen))
    return ExpertRouter(experts, edges).eval()


def train_full_experts(backbone: nn.Module, x: torch.Tensor, y: torch.Tensor, schedule: Schedule, edges, *,
                       steps: int, seed: int = 0, batch_size: int = 128, lr: float = 1e-3,
                       sequential: bool = True) -> ExpertRouter:
    """Baseline: N fully fine-tuned copies of ``backbone`` (all parameters trainable), expert i trained with
    cross-entropy on labelled (x, y) noised to t ~ U[edges[i], edges[i+1]]. The backbone is not modified."""
    _check_pos_int("steps", steps)
    edges = torch.as_tensor(edges, dtype=torch.float64)
    y = torch.as_tensor(y).long()
    x = x.detach().float()
    gen = torch.Generator().manual_seed(int(seed))

    def loss_fn(logits, idx):
        return F.cross_entropy(logits, y[idx])

    experts = []
    for i in range(len(edges) - 1):
        e = copy.deepcopy(experts[-1] if (sequential and experts) else backbone)
        for p in e.parameters():
            p.requires_grad_(True)
        experts.append(_train_range(e, loss_fn, x, schedule, float(edges[i]), float(edges[i + 1]), steps=steps,
                                    batch_size=batch_size, lr=lr, weight_decay=0.0, gen=gen))
    return ExpertRouter(experts, edges).eval()
