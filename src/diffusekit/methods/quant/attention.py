"""Quantized attention matmuls (issue 9): Q-Diffusion's fake-quantized q, k, v and softmax probabilities.

Q-Diffusion (Li et al., ICCV 2023, arXiv 2302.04304, Sec. 5 / its ``QuantAttnBlock``) quantizes, besides every
Conv/Linear layer, the inputs of the two attention matmuls: the scores use Q(q) Q(k)^T and the output uses
Q_p(P) Q(v) with P the softmax probabilities,

    S = Q_a(q) Q_a(k)^T / sqrt(d),   P = softmax(S) (over keys),   out = Q_p(P) Q_a(v),

each Q a per-tensor uniform fake-quantizer (``quantizer.UniformQuantizer``) with its own range. The softmax
output gets its own bit width (``softmax_bits``, default = abits; Q-Diffusion keeps it at 16 bits for Stable
Diffusion, where 8-bit probabilities hurt). P lies in [0, 1], so its grid is unsigned with zero point 0.

Networks route attention through the parameter-free ``diffusekit.nets.ScaledDotProductAttention`` module
(our ``UNet`` does; any user network can); ``quantize_attention`` swaps each one for ``QuantAttention``. No
state_dict key of the network changes except the new quantizer parameters under the attention module's
name. The activation quantizers join the shared machinery (``modules.calibrate`` observes them,
``set_quant_step`` selects their per-step sets, ``set_act_mode`` switches them), so calibrating a quantized
network sets these ranges too. With every quantizer "off" the module calls ``F.scaled_dot_product_attention``
exactly as the float module does (bit-identical).

``nn.MultiheadAttention`` is not swapped: its fused forward (masks, packed projections, dropout, optional
weights output) has no module boundary at the matmuls; networks that want quantized attention matmuls call
``ScaledDotProductAttention`` instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...nets.unet import ScaledDotProductAttention
from .quantizer import UniformQuantizer

__all__ = ["QuantAttention", "quantize_attention", "attention_layers"]


class QuantAttention(nn.Module):
    """softmax(Q_a(q) Q_a(k)^T / sqrt(d)) -> Q_p -> @ Q_a(v) (Q-Diffusion, arXiv 2302.04304).

    Args:
        abits: bit width of the q, k and v quantizers.
        softmax_bits: bit width of the softmax-probability quantizer (default ``abits``; 16 as Q-Diffusion's
            Stable Diffusion setting).
        act_symmetric: signed grid with z = 0 for q, k, v (the probabilities always use the unsigned grid).
        act_steps: S per-sampling-step (Delta, z) sets (TFMQ-DM's FSC / EfficientDM's TALSQ), chosen by
            ``modules.set_quant_step``.
        learnable: LSQ step sizes (trained through the STE).

    Shapes: q (..., N, d), k (..., M, d), v (..., M, d_v) -> (..., N, d_v). The quantizers need
    ``modules.calibrate`` (or ``init_range``) before the module runs in "quant" mode.
    """

    def __init__(self, abits: int, *, softmax_bits: int | None = None, act_symmetric: bool = False,
                 act_steps: int | None = None, learnable: bool = False):
        super().__init__()
        kw = dict(num_steps=act_steps, learnable=learnable)
        self.q_quant = UniformQuantizer(abits, symmetric=act_symmetric, **kw)
        self.k_quant = UniformQuantizer(abits, symmetric=act_symmetric, **kw)
        self.v_quant = UniformQuantizer(abits, symmetric=act_symmetric, **kw)
        self.p_quant = UniformQuantizer(abits if softmax_bits is None else softmax_bits, symmetric=False, **kw)

    def activation_quantizers(self) -> list[UniformQuantizer]:
        """The four activation quantizers (q, k, v, softmax probabilities), for ``modules.calibrate`` & co."""
        return [self.q_quant, self.k_quant, self.v_quant, self.p_quant]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_quant(q), self.k_quant(k), self.v_quant(v)
        if self.p_quant.mode == "off":
            return F.scaled_dot_product_attention(q, k, v)
        scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(q.shape[-1]))  # (..., N, M)
        return self.p_quant(scores.softmax(dim=-1)) @ v

    def extra_repr(self) -> str:
        return f"qkv: {self.q_quant.extra_repr()}; softmax: {self.p_quant.extra_repr()}"


def attention_layers(net: nn.Module) -> dict[str, QuantAttention]:
    """The ``QuantAttention`` modules of ``net`` by qualified name."""
    return {n: m for n, m in net.named_modules() if isinstance(m, QuantAttention)}


def quantize_attention(net: nn.Module, abits: int, *, act_steps: int | None = None, softmax_bits: int | None = None,
                       act_symmetric: bool = False, learnable: bool = False) -> nn.Module:
    """Swap (in place) every ``ScaledDotProductAttention`` of ``net`` for a ``QuantAttention`` with the given
    settings (see there); returns ``net``. Works before or after ``modules.quantize_model``; calibrate
    afterwards with ``modules.calibrate`` (one call sets the layers' and the attention ranges).

    Raises ValueError if ``net`` has no ``ScaledDotProductAttention`` or its attention is already quantized.
    """
    if attention_layers(net):
        raise ValueError(f"{type(net).__name__} already has quantized attention; quantize the original network")
    names = [n for n, m in net.named_modules() if type(m) is ScaledDotProductAttention and n]
    if not names:
        raise ValueError(f"{type(net).__name__} has no diffusekit.nets.ScaledDotProductAttention module to quantize"
                         " (route attention through it)")
    device = next(iter(net.parameters()), torch.zeros(())).device
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, QuantAttention(abits, softmax_bits=softmax_bits, act_symmetric=act_symmetric,
                                              act_steps=act_steps, learnable=learnable).to(device))
    return net
