"""Quantization of diffusion networks (issue 9), built on one shared fake-quant layer.

What exists (this piece):
* ``quantizer``: ``UniformQuantizer``, uniform affine fake-quant with a straight-through estimator,
  per-tensor or per-channel, optional per-sampling-step parameter sets indexed by an explicit step id,
  range initialisation by min/max, percentile or MSE search, LSQ learnable step sizes.
* ``modules``: ``QuantLinear`` / ``QuantConv2d`` wrappers, ``quantize_model`` (swaps the Linear and
  Conv2d layers of any ``nn.Module``; first/last layers configurable), ``calibrate`` (activation ranges
  from forward passes), ``set_quant_step``, ``quant_state`` / ``weight_bytes`` accounting.

Still to come (not in this piece): AdaRound and BRECQ block reconstruction, the attention matmul
quantizers, PTQ4DM (NDTC calibration), Q-Diffusion (time-step-aware calibration, split shortcut),
TFMQ-DM (TIAR, finite-set calibration, cached temporal features), EDA-DM (TDAC, FBR), EfficientDM
(QALoRA, TALSQ, data-free distillation), real int8 export, the ``diffusekit quantize`` CLI and
``diffusekit bench quant``.
"""

from .modules import (QuantConv2d, QuantLinear, calibrate, quant_layers, quant_state, quantize_model,
                      set_act_mode, set_quant_step, weight_bytes)
from .quantizer import RANGE_METHODS, UniformQuantizer, fake_quant, params_from_range, qrange

__all__ = ["UniformQuantizer", "RANGE_METHODS", "fake_quant", "params_from_range", "qrange",
           "QuantLinear", "QuantConv2d", "quantize_model", "quant_layers", "calibrate", "set_quant_step",
           "set_act_mode", "quant_state", "weight_bytes"]
