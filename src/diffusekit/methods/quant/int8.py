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

Saving an exported model (``int8_tensors`` / ``load_int8``, files: ``save_int8_file`` / ``load_int8_file``):
a plain ``{name: tensor}`` dict, safetensors-compatible (no pickle, no shared storage). Per int8 layer
``<layer>.int8.weight`` (int8, the signed grid W_int - 128), ``.int8.weight_scale`` (float32, per output
channel), ``.int8.weight_zero_point`` (int32, z - 128), ``.int8.bias`` (float32, if any),
``.int8.input_scale`` (float32, (1,)) and ``.int8.input_zero_point`` (int32, (1,), the quint8 zero point);
every other parameter and buffer of the model under its own state_dict key. ``load_int8`` takes the model's
fake-quant structure (the fp net after the same ``split_concat_convs`` / ``quantize_model(net, 8, 8)`` /
``quantize_attention`` calls, ranges not calibrated), writes each layer's grid back into its fake-quant
wrapper (weight = (W_int - z) Delta_w, exactly on the grid) and runs ``export_int8``: the rebuilt layers hold
the same integers and scales, so the loaded model's outputs equal the saved model's bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .modules import QuantConv2d, QuantLinear, _set_child, quant_layers

__all__ = ["Int8Linear", "Int8Conv2d", "export_int8", "int8_layers", "int8_weight_bytes", "int8_tensors",
           "load_int8", "save_int8_file", "load_int8_file"]

#: per-layer entries of the saved tensor dict (``<layer name>.int8.<entry>``); bias is optional
INT8_ENTRIES = ("weight", "weight_scale", "weight_zero_point", "bias", "input_scale", "input_zero_point")

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


def _packed(w_int8, w_scale, w_zero_point, bias, x_scale: float, x_zero_point: int) -> dict[str, torch.Tensor]:
    out = {"weight": w_int8.to(torch.int8), "weight_scale": w_scale.float(),
           "weight_zero_point": w_zero_point.to(torch.int32),
           "input_scale": torch.tensor([x_scale], dtype=torch.float32),
           "input_zero_point": torch.tensor([x_zero_point], dtype=torch.int32)}
    if bias is not None:
        out["bias"] = bias.float()
    return {k: v.detach().cpu().contiguous().clone() for k, v in out.items()}


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

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        """The layer's integers and scales as plain tensors (see the module docstring, ``INT8_ENTRIES``)."""
        qw, bias = torch.ops.quantized.linear_unpack(self._packed)
        return _packed(qw.int_repr(), qw.q_per_channel_scales(), qw.q_per_channel_zero_points(), bias,
                       self.x_scale, self.x_zero_point)

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
        self._int8_zero_point = qw.q_per_channel_zero_points()  # for saving (plain tensor, not a buffer)

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

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        """The layer's integers and scales as plain tensors (see the module docstring, ``INT8_ENTRIES``)."""
        return _packed(self._int8, self.w_scale, self._int8_zero_point, self.bias_f, self.x_scale, self.x_zero_point)


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


def int8_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """An ``export_int8``-ed model as a plain ``{name: tensor}`` dict (safetensors-compatible): each int8
    layer's packed integers and scales under ``<layer>.int8.<entry>``, every other state_dict entry as is.
    Raises ValueError if ``model`` has no int8 layer."""
    layers = int8_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no int8 layer; run export_int8 first")
    out = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
           if not any(k.startswith(name + ".") for name in layers)}
    for name, m in layers.items():
        out.update({f"{name}.int8.{k}": v for k, v in m.packed_tensors().items()})
    return out


@torch.no_grad()
def load_int8(model: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild an int8 model from ``int8_tensors`` output: ``model`` is its fake-quant structure (the fp net
    after the same ``quantize_model(net, 8, 8, ...)`` and other structure calls, not calibrated); each W8A8
    wrapper gets the stored grid (weight (W_int - z) Delta_w, Delta_w, z, the input's Delta_a, z_a), the rest
    of the state is loaded strictly, then ``export_int8`` swaps the layers. Returns ``model`` (in place).

    Raises ValueError when the tensors do not fit the structure (missing or extra layers or keys).
    """
    layers = quant_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantized layer; pass the fake-quant structure "
                         "(quantize_model(net, 8, 8)) the int8 model was exported from")
    stored = {k.rsplit(".int8.", 1)[0] for k in tensors if ".int8." in k}
    if stored != set(layers):
        missing, extra = sorted(set(layers) - stored), sorted(stored - set(layers))
        raise ValueError(f"int8 tensors do not fit the structure: layers missing {missing[:3]}, unknown {extra[:3]}")
    state = {k: v for k, v in tensors.items() if ".int8." not in k}
    for name, m in layers.items():
        _check_layer_bits(name, m)
        p = {e: tensors.get(f"{name}.int8.{e}") for e in INT8_ENTRIES}
        if any(p[e] is None for e in INT8_ENTRIES if e != "bias") or (p["bias"] is None) != (m.layer.bias is None):
            raise ValueError(f"int8 tensors of layer {name} are incomplete; need {', '.join(INT8_ENTRIES)}")
        shift_w = 0 if m.w_quant.symmetric else 128
        shift_a = 128 if m.a_quant.symmetric else 0
        scale = p["weight_scale"].float()
        zp = p["weight_zero_point"].float() + shift_w
        shape = [-1] + [1] * (m.layer.weight.dim() - 1)
        if p["weight"].shape != m.layer.weight.shape:
            raise ValueError(f"int8 weight of layer {name} has shape {tuple(p['weight'].shape)}; the structure's is "
                             f"{tuple(m.layer.weight.shape)}")
        w = (p["weight"].float() + shift_w - zp.reshape(shape)) * scale.reshape(shape)
        state[f"{name}.layer.weight"] = w.to(m.layer.weight.dtype)
        if p["bias"] is not None:
            state[f"{name}.layer.bias"] = p["bias"]
        for qname, sc, z in (("w_quant", scale, zp),
                             ("a_quant", p["input_scale"].float(), p["input_zero_point"].float() - shift_a)):
            q = getattr(m, qname)
            state[f"{name}.{qname}.scale"] = sc.reshape(q.scale.shape)
            state[f"{name}.{qname}.zero_point"] = z.reshape(q.zero_point.shape)
            state[f"{name}.{qname}.initialized"] = torch.ones_like(q.initialized)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ValueError(f"int8 tensors do not fit the structure: {' '.join(x.strip() for x in first[:3])}") from None
    return export_int8(model)


def _check_layer_bits(name: str, m) -> None:
    if m.w_quant is None or m.a_quant is None or m.w_quant.bits != 8 or m.a_quant.bits != 8:
        raise ValueError(f"layer {name} of the structure is not W8A8; int8 models load into quantize_model(net, 8, 8)")
    if m.a_quant.num_steps is not None:
        raise ValueError(f"layer {name} of the structure has per-step activation sets; int8 models have one range")


def save_int8_file(model: nn.Module, path, metadata: dict[str, str] | None = None) -> None:
    """Write ``int8_tensors(model)`` to a safetensors file at ``path`` (atomically; ``metadata``: str -> str)."""
    from safetensors.torch import save_file

    from ...io import atomic_write

    tensors = int8_tensors(model)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_int8_file(model: nn.Module, path) -> nn.Module:
    """``load_int8(model, tensors)`` with the tensors of a safetensors file written by ``save_int8_file``."""
    from safetensors.torch import load_file

    return load_int8(model, load_file(str(path)))
