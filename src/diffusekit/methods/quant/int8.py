"""Real int8 CPU inference for a W8A8 fake-quant model (issue 9, "real low-bit inference").

``export_int8`` swaps every ``QuantLinear`` / ``QuantConv2d`` of a model that went through
``quantize_model(..., wbits=8, abits=8)`` and ``calibrate`` for a module running PyTorch's own int8 kernels
(``torch.ops.quantized``, engine x86/fbgemm in torch 2.13), in place, keeping the forward interface
(float in, float out), so a ``NetworkDenoiser`` and the samplers run it unchanged.

The integer grids are the fake-quant model's own, so the int8 model reproduces it:

* weights: the fake-quant per-output-channel asymmetric grid W_int in [0, 255] with zero point z is stored
  as signed int8 W_int - 128 with zero point z - 128 (same dequantized values (W_int - z) * Delta_w);
* activations: the calibrated per-tensor (Delta_a, z_a) quantize the input to quint8 (asymmetric grid
  [0, 255]; a symmetric grid [-128, 127] becomes quint8 with zero point 128), same values as Q_a(x);
* ``Int8Linear``: ``quantized::linear_with_input_q_dq_qweight_dq_output_fp32`` (int8 x int8 GEMM,
  float bias and float output): equal to the fake-quant layer up to float summation order;
* ``Int8Conv2d``: ``onednn::qconv2d_pointwise`` (u8 x s8 conv, int32 accumulation, float bias and float
  output; fbgemm's ``quantized::conv2d`` can only requantize its output to 8 bits, which doubles the
  quantization noise), plus a cheap float correction for the weight zero points (oneDNN ignores them).
  Equal to the fake-quant layer up to float summation order.

Measured (torch 2.13 CPU, 1 thread, DDIM end to end, medians of 5-7 interleaved repeats, fp32 / int8 time):
digits UNet 8x8 (batch 64, 20 steps) 0.87x, i.e. int8 slower (per-layer quantize and correction overhead
beats the kernel gain on 8x8 maps); random-init UNet on 32x32 (batch 8, 5 steps, channel_mult (1, 2)) at
base_channels 16 / 32 / 48 / 64 / 128 / 256: 0.73x / 0.93x / 1.08x / 1.21x / 1.65x / 2.25x (crossover near
base_channels 40). Weight bytes vs fp32: 0.336 (digits), 0.253 (base 256).

Not supported (ValueError): other bit widths, layers without a weight or activation quantizer,
uncalibrated activation quantizers, per-sampling-step activation sets, non-zero padding modes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .modules import QuantConv2d, QuantLinear, _set_child, quant_layers

__all__ = ["Int8Linear", "Int8Conv2d", "export_int8", "int8_layers", "int8_weight_bytes"]

def _check_layer(name: str, m) -> None:
    if m.w_quant is None or m.a_quant is None:
        raise ValueError(f"layer {name} is not quantized on both weights and activations; int8 export needs W8A8")
    if m.w_quant.bits != 8 or m.a_quant.bits != 8:
        raise ValueError(f"layer {name} is W{m.w_quant.bits}A{m.a_quant.bits}; int8 export needs W8A8")
    if m.a_quant.num_steps is not None:
        raise ValueError(f"layer {name} has per-step activation sets; int8 export needs one activation range")
    if not bool(m.a_quant.initialized.all()) or not bool(m.w_quant.initialized.all()):
        raise ValueError(f"layer {name} is not calibrated; run calibrate before export_int8")
    if isinstance(m, QuantConv2d) and m.layer.padding_mode != "zeros":
        raise ValueError(f"layer {name} uses padding_mode={m.layer.padding_mode!r}; int8 export needs zeros")


def _int8_weight(m) -> torch.Tensor:
    """The fake-quant weight grid as a per-channel qint8 tensor with the same dequantized values."""
    q = m.w_quant
    w = m.layer.weight.detach().float()
    shape = [-1] + [1] * (w.dim() - 1)
    scale = q.scale.detach().float().clamp_min(1e-8)
    zp = q.zero_point.detach().float()
    w_int = torch.clamp(torch.round(w / scale.reshape(shape)) + zp.reshape(shape), q.q_min, q.q_max)
    shift = 0 if q.symmetric else 128  # unsigned [0, 255] -> signed [-128, 127]
    return torch._make_per_channel_quantized_tensor((w_int - shift).to(torch.int8), scale.double(),
                                                    (zp - shift).long(), 0)


def _act_params(m) -> tuple[float, int]:
    q = m.a_quant
    scale = float(q.scale.detach().reshape(-1)[0].clamp_min(1e-8))
    zp = int(q.zero_point.reshape(-1)[0]) + (128 if q.symmetric else 0)
    return scale, zp


class Int8Linear(nn.Module):
    """Float in, float out: quantize x with the calibrated (Delta_a, z_a), int8 GEMM, float bias."""

    def __init__(self, m: QuantLinear):
        super().__init__()
        self.in_features, self.out_features = m.layer.in_features, m.layer.out_features
        self.x_scale, self.x_zero_point = _act_params(m)
        bias = None if m.layer.bias is None else m.layer.bias.detach().float().clone()
        self._packed = torch.ops.quantized.linear_prepack(_int8_weight(m), bias)
        self._weight_numel = m.layer.weight.numel()
        self._bias_numel = 0 if bias is None else bias.numel()

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (float, a new tensor; for code that reads ``layer.weight``, e.g. its dtype)."""
        return torch.ops.quantized.linear_unpack(self._packed)[0].dequantize()

    @property
    def bias(self) -> torch.Tensor | None:
        return torch.ops.quantized.linear_unpack(self._packed)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x2 = x.reshape(-1, self.in_features).float().contiguous()
        y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            x2, self.x_scale, self.x_zero_point, self._packed)
        return y.reshape(*x.shape[:-1], self.out_features).to(dtype)

    def storage_bytes(self) -> int:
        """int8 weight + fp32 bias + per-channel (scale fp32, zero point int32) + input (scale, zero point)."""
        return self._weight_numel + 4 * self._bias_numel + 8 * self.out_features + 8

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, x_scale={self.x_scale:.3g}, x_zp={self.x_zero_point}"


class Int8Conv2d(nn.Module):
    """Float in, float out: x_int = clamp(round(x / Delta_a) + z_a) as uint8 (the fake-quant integers
    exactly), oneDNN int8 conv (``onednn::qconv2d_pointwise``, u8 x s8, int32 accumulation, float bias and
    float output), minus the weight zero-point term.

    oneDNN's int8 conv takes symmetric weights only (zero points are ignored), so the weight is stored as
    W_s = W_int - 128 in [-128, 127] with z_s = z - 128 and the conv of the zero-point part is done apart:

        conv(x_hat, (W_s - z_s) Delta_w)[o] = Delta_w[o] conv(x_hat, W_s)[o] - Delta_w[o] z_s[o] S,
        S = conv(sum over the group's input channels of x_hat, ones(kh, kw)),

    which costs one single-channel (per group) float conv, about 1 / C_out of the main one.
    """

    def __init__(self, m: QuantConv2d):
        super().__init__()
        conv = m.layer
        if isinstance(conv.padding, str):
            raise ValueError(f"padding={conv.padding!r} is not supported by int8 export; give explicit padding")
        self.x_scale, self.x_zero_point = _act_params(m)
        qw = _int8_weight(m)
        w_s = qw.int_repr().contiguous()
        self.register_buffer("w_scale", qw.q_per_channel_scales().float())
        self.register_buffer("_w_zero", torch.zeros(conv.out_channels, dtype=torch.long))
        zs = qw.q_per_channel_zero_points().float()
        self.register_buffer("_corr", (self.w_scale * zs * self.x_scale).reshape(1, -1, 1, 1))
        self._has_corr = bool((zs != 0).any())
        self.register_buffer("bias_f", None if conv.bias is None else conv.bias.detach().float().clone())
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.kernel_size, self.out_channels, self.in_channels = tuple(conv.kernel_size), conv.out_channels, \
            conv.in_channels
        self._packed = torch.ops.onednn.qconv_prepack(w_s, self.w_scale, self.x_scale, self.x_zero_point,
                                                      self.stride, self.padding, self.dilation, self.groups, None)
        self._int8 = w_s  # kept for ``weight`` and byte counting (plain int8 tensor, not a buffer)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (float, a new tensor; for code that reads ``layer.weight``)."""
        zs = (self._corr.reshape(-1) / (self.w_scale * self.x_scale)).round()
        return (self._int8.float() - zs.reshape(-1, 1, 1, 1)) * self.w_scale.reshape(-1, 1, 1, 1)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.bias_f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xi = torch.clamp(torch.round(x.float() / self.x_scale) + self.x_zero_point, 0, 255)
        y = torch.ops.onednn.qconv2d_pointwise(
            xi.to(torch.uint8), self.x_scale, self.x_zero_point, self._packed, self.w_scale, self._w_zero,
            self.bias_f, self.stride, self.padding, self.dilation, self.groups, 1.0, 0, torch.float32, "none", [],
            "")
        if self._has_corr:
            n, c, h, w = xi.shape
            g = self.groups
            xs = (xi - self.x_zero_point).reshape(n, g, c // g, h, w).sum(2)  # integers: exact in float32
            ones = xs.new_ones(g, 1, *self.kernel_size)
            s = F.conv2d(xs, ones, None, self.stride, self.padding, self.dilation, g)
            s = s.repeat_interleave(self.out_channels // g, dim=1)
            y = y - self._corr * s
        return y.to(dtype)

    def storage_bytes(self) -> int:
        """int8 weight + fp32 bias + per-channel (scale fp32, zero point int32) + input (scale, zero point)."""
        bias = 0 if self.bias_f is None else self.bias_f.numel()
        return self._int8.numel() + 4 * bias + 8 * self.out_channels + 8


@torch.no_grad()
def export_int8(model: nn.Module) -> nn.Module:
    """Swap (in place) each W8A8 ``QuantLinear`` / ``QuantConv2d`` of a calibrated ``quantize_model``-ed
    model for ``Int8Linear`` / ``Int8Conv2d``; returns ``model``.

    Raises ValueError (before changing anything) if the model has no quantized layer, or any quantized
    layer is not W8A8 with one calibrated activation range.
    """
    layers = quant_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantized layer; run quantize_model(..., 8, 8) first")
    for name, m in layers.items():
        _check_layer(name, m)
    for name, m in layers.items():
        _set_child(model, name, Int8Conv2d(m) if isinstance(m, QuantConv2d) else Int8Linear(m))
    return model


def int8_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (Int8Linear, Int8Conv2d))}


def int8_weight_bytes(model: nn.Module) -> int:
    """Bytes of the exported model's weights: the int8 layers' ``storage_bytes`` plus every remaining
    parameter and buffer (norms, embeddings, floating-point layers) at its dtype's size."""
    total = sum(m.storage_bytes() for m in int8_layers(model).values())
    total += sum(p.numel() * p.element_size() for p in list(model.parameters()) + list(model.buffers()))
    return total
