"""AFA: ensembling diffusion models by adaptive feature aggregation (Wang et al., ICLR 2025, arXiv 2405.17082),
for M frozen same-architecture ``nets.UNet`` denoisers, plus the static baselines it is compared with.

All experts run block by block. After every block-level layer (conv_in, each element of the encoder, the
middle block, each decoder element but the last, and the output convolution) the M expert features f_m of
that layer go through a spatial feature aggregator (paper Sec. 3.2, Fig. 2):

    h   = Conv1x1(concat(f_1, ..., f_M))                       (B, hidden, H, W)
    h   = ResBlock(h, e_bar)          e_bar = (1/M) sum_m e_m  (mean of the experts' time/class embeddings)
    h   = SelfAttention(h)                                     (optional; ``attention_heads=0`` drops it)
    A   = softmax_m(Conv1x1(h))                                (B, M, H, W), per-pixel weights, sum_m A_m = 1
    f   = sum_m A_m * f_m                                       (B, C, H, W)

and f is what *every* expert's next block receives (the U-Net skip connections store the aggregated f too).
The last Conv1x1 is zero-initialised, so at initialisation A_m = 1/M: the ensemble starts as the block-wise
uniform average of features. Only the aggregators are trained, with the experts' own objective (eps-MSE here,
through ``training.DiffusionLoss`` and the generic ``Trainer``); the experts are frozen (``requires_grad=False``,
kept in eval mode). The paper's aggregator also cross-attends to the (mean) text embedding; our experts are
class-conditional, and the class already enters e_bar, so there is no cross-attention.

Baselines: ``OutputAverage`` (eps_hat = (1/M) sum_m eps_m, one call per expert) and ``average_weights``
(theta = (1/M) sum_m theta_m; meaningful only when the experts share an initialisation, otherwise their hidden
units are not aligned and the average is a poor network).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nets.embedding import prepare_labels, prepare_time
from ..nets.unet import AttentionBlock, ResBlock, UNet, _Level

__all__ = ["FeatureAggregator", "AFAEnsemble", "OutputAverage", "average_weights", "aggregation_points",
           "train_afa"]


def _conv1x1(dims: int, cin: int, cout: int) -> nn.Module:
    return (nn.Conv2d if dims == 2 else nn.Conv1d)(cin, cout, 1)


class FeatureAggregator(nn.Module):
    """One AFA spatial aggregator (arXiv 2405.17082, Sec. 3.2): per-pixel softmax weights over M experts.

    ``A = softmax_m(W_out SA(ResBlock(W_in [f_1; ...; f_M], e)))``, ``f = sum_m A_m * f_m``; ``W_in``, ``W_out``
    are 1x1 convolutions, ``W_out`` zero-initialised (uniform weights 1/M at initialisation).

    Shapes: features (B, M, C, *spatial), emb (B, emb_dim) -> (f (B, C, *spatial), A (B, M, *spatial)).
    """

    def __init__(self, channels: int, num_experts: int, emb_dim: int, *, hidden: int = 32, attention_heads: int = 0,
                 dims: int = 2):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1; got {num_experts}")
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1; got {hidden}")
        self.num_experts = num_experts
        self.conv_in = _conv1x1(dims, channels * num_experts, hidden)
        self.res = ResBlock(dims, hidden, hidden, emb_dim, 0.0)
        self.attn = AttentionBlock(hidden, attention_heads) if attention_heads > 0 else None
        self.conv_out = _conv1x1(dims, hidden, num_experts)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def logits(self, features: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Per-pixel expert logits (B, M, *spatial) before the softmax."""
        h = self.conv_in(features.flatten(1, 2))  # (B, M*C, *S) -> (B, hidden, *S)
        h = self.res(h, emb)
        if self.attn is not None:
            h = self.attn(h)
        return self.conv_out(h)

    def forward(self, features: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if features.shape[1] != self.num_experts:
            raise ValueError(f"expected features of {self.num_experts} experts, got shape {tuple(features.shape)}")
        weights = torch.softmax(self.logits(features, emb), dim=1)  # (B, M, *S)
        return (features * weights.unsqueeze(2)).sum(1), weights


def _check_experts(experts: Sequence[nn.Module]) -> list[UNet]:
    experts = list(experts)
    if not experts:
        raise ValueError("need at least one expert")
    for e in experts:
        if not isinstance(e, UNet):
            raise ValueError(f"experts must be diffusekit.nets.UNet instances, got {type(e).__name__}")
    config = experts[0].config
    for i, e in enumerate(experts[1:], 1):
        if e.config != config:
            raise ValueError(f"expert {i} has config {e.config}, expert 0 has {config}; AFA needs one architecture")
    return experts


def aggregation_points(unet: UNet) -> list[str]:
    """Names of the layers after which AFA aggregates, in forward order (one aggregator each): ``conv_in``,
    ``down.i`` for every encoder element, ``mid``, ``up.i`` for every decoder element but the last, ``out``."""
    return (["conv_in"] + [f"down.{i}" for i in range(len(unet.down))] + ["mid"]
            + [f"up.{i}" for i in range(len(unet.up) - 1)] + ["out"])


def _point_channels(unet: UNet) -> list[int]:
    """Channel count of the feature at every aggregation point (same order as ``aggregation_points``)."""
    channels = [unet.conv_in.out_channels]
    for block in unet.down:
        channels.append(block.res.conv2.out_channels if isinstance(block, _Level) else block.conv.out_channels)
    channels.append(unet.mid2.conv2.out_channels)
    for block in list(unet.up)[:-1]:
        channels.append(block.res.conv2.out_channels if isinstance(block, _Level) else block.conv.out_channels)
    return channels + [unet.conv_out.out_channels]


def _run_block(block: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    return block(h, emb) if isinstance(block, _Level) else block(h)


class AFAEnsemble(nn.Module):
    """Adaptive feature aggregation of M frozen same-architecture UNets (arXiv 2405.17082, Sec. 3).

    ``forward(x, t, class_labels=None)`` has the UNet contract (network time t, labels with the null class at
    ``num_classes``) and returns the aggregated output ``sum_m A_m^out * eps_m``; the block-wise scheme is in the
    module docstring. ``forward(..., return_weights=True)`` also returns the list of softmax maps
    A (B, M, *spatial), one per aggregation point (``aggregation_points(expert)``).

    Args:
        experts: M ``nets.UNet`` with identical configs; they are deep-copied, frozen and kept in eval mode.
        hidden: aggregator width. attention_heads: heads of the aggregators' self-attention (0: none).
    """

    def __init__(self, experts: Sequence[UNet], *, hidden: int = 32, attention_heads: int = 0):
        super().__init__()
        experts = _check_experts(experts)
        self.experts = nn.ModuleList(copy.deepcopy(e) for e in experts).requires_grad_(False).eval()
        ref = self.experts[0]
        self.num_experts = len(experts)
        self.points = aggregation_points(ref)
        emb_dim = ref.embed.mlp[-1].out_features
        self.aggregators = nn.ModuleList(
            FeatureAggregator(c, self.num_experts, emb_dim, hidden=hidden, attention_heads=attention_heads,
                              dims=ref.dims)
            for c in _point_channels(ref))
        self.num_classes = ref.num_classes
        self.config = {"name": "afa", "num_experts": self.num_experts, "hidden": hidden,
                       "attention_heads": attention_heads, "expert": dict(ref.config),
                       "num_classes": ref.num_classes}

    def train(self, mode: bool = True):
        """Train mode for the aggregators only; the frozen experts stay in eval mode."""
        super().train(mode)
        self.experts.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The aggregators' parameters (the only ones AFA trains)."""
        return list(self.aggregators.parameters())

    def forward(self, x: torch.Tensor, t, class_labels=None, *, return_weights: bool = False):
        experts = list(self.experts)
        ref = experts[0]
        ref._check_input(x)
        batch = x.shape[0]
        t = prepare_time(t, batch, x)
        labels = prepare_labels(class_labels, batch, ref.num_classes, x.device)
        embs = [F.silu(e.embed(t, labels)) for e in experts]
        emb_bar = torch.stack(embs).mean(0)
        weights: list[torch.Tensor] = []
        aggregators = iter(self.aggregators)

        def aggregate(features: list[torch.Tensor]) -> torch.Tensor:
            f, a = next(aggregators)(torch.stack(features, 1), emb_bar)  # (B, M, C, *S) -> (B, C, *S)
            weights.append(a)
            return f

        h = aggregate([e.conv_in(x) for e in experts])
        skips = [h]
        for i in range(len(ref.down)):
            h = aggregate([_run_block(e.down[i], h, emb) for e, emb in zip(experts, embs)])
            skips.append(h)
        mids = []
        for e, emb in zip(experts, embs):
            m = e.mid1(h, emb)
            if e.mid_attn is not None:
                m = e.mid_attn(m)
            mids.append(e.mid2(m, emb))
        h = aggregate(mids)
        last = len(ref.up) - 1
        for i in range(len(ref.up)):
            block_input = torch.cat([h, skips.pop()], dim=1) if isinstance(ref.up[i], _Level) else h
            features = [_run_block(e.up[i], block_input, emb) for e, emb in zip(experts, embs)]
            if i < last:
                h = aggregate(features)
        out = aggregate([e.conv_out(F.silu(e.out_norm(f))) for e, f in zip(experts, features)])
        return (out, weights) if return_weights else out


class OutputAverage(nn.Module):
    """Output averaging: eps_hat(x, t, c) = (1/M) sum_m eps_m(x, t, c) (the static output ensemble AFA is compared
    with in arXiv 2405.17082, Tab. 1). Same forward contract as the experts."""

    def __init__(self, experts: Sequence[UNet]):
        super().__init__()
        experts = _check_experts(experts)
        self.experts = nn.ModuleList(copy.deepcopy(e) for e in experts).requires_grad_(False).eval()
        self.config = {"name": "output_average", "num_experts": len(experts), "expert": dict(experts[0].config),
                       "num_classes": experts[0].num_classes}

    def forward(self, x: torch.Tensor, t, class_labels=None) -> torch.Tensor:
        return torch.stack([e(x, t, class_labels) for e in self.experts]).mean(0)


def average_weights(experts: Sequence[UNet]) -> UNet:
    """Weight averaging (model soup): one UNet with theta = (1/M) sum_m theta_m, every parameter and buffer
    averaged. Valid only for one architecture; it is a sensible model only when the experts were fine-tuned
    from a shared initialisation (arXiv 2405.17082 compares with it as a static merge)."""
    experts = _check_experts(experts)
    merged = copy.deepcopy(experts[0])
    states = [e.state_dict() for e in experts]
    merged.load_state_dict({k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype)
                            for k, v in states[0].items()})
    return merged.eval()


def train_afa(ensemble: AFAEnsemble, data: tuple, schedule, *, steps: int, batch_size: int = 64, lr: float = 1e-3,
              weight_decay: float = 0.01, label_dropout: float = 0.1, seed: int = 0, progress: bool = False) -> dict:
    """Train only the aggregators of ``ensemble`` with the eps-MSE ``DiffusionLoss`` (uniform t, label dropout
    for classifier-free guidance) and AdamW, as the paper does (its lr 1e-4 and weight decay 0.01 are for
    SD-1.5; the default lr here suits the tiny nets). ``data``: (x0,) or (x0, labels). Returns the trainer
    history (``loss`` per step, ``seconds``). The experts' weights are untouched (no gradient reaches them)."""
    from ..training import DiffusionLoss, TrainConfig, Trainer

    loss = DiffusionLoss(schedule, "eps", label_dropout=label_dropout if len(data) > 1 else 0.0)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_steps=0,
                         grad_clip=1.0, ema_decay=None, seed=seed, progress=progress, log_every=max(1, steps))
    return Trainer(ensemble, loss, tuple(data), config).fit()
