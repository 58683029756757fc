"""Quantization of diffusion networks (issue 9), built on one shared fake-quant layer.

What exists (this piece):
* ``quantizer``: ``UniformQuantizer``, uniform affine fake-quant with a straight-through estimator,
  per-tensor or per-channel, optional per-sampling-step parameter sets indexed by an explicit step id,
  range initialisation by min/max, percentile or MSE search, LSQ learnable step sizes.
* ``modules``: ``QuantLinear`` / ``QuantConv2d`` wrappers, ``quantize_model`` (swaps the Linear and
  Conv2d layers of any ``nn.Module``; first/last layers configurable), ``calibrate`` (activation ranges
  from forward passes), ``set_quant_step``, ``quant_state`` / ``weight_bytes`` accounting.
* ``calibration``: calibration sets from the full-precision model's own sampling trajectories
  (``record_trajectories``): PTQ4DM's (Shang et al. 2023) times around 0.4 T, Q-Diffusion's (Li et al. 2023)
  time-step-aware set (equal samples at evenly spaced steps), the naive forward-noised baseline and a
  one-step ablation; ``calibrate_denoiser``; Q-Diffusion's split shortcut quantization (``SplitConv2d``,
  ``split_concat_convs``) for the UNet's skip-concatenation convs. Measured on ``digits_unet`` at W4A8: the
  trajectory-based sets are within seed noise of the naive one (x0 error 0.64-0.68 vs 0.65-0.70) and about
  4x better than one step; splitting the shortcut halves the error of the concatenation convs.

* ``int8``: ``export_int8`` swaps a calibrated W8A8 fake-quant model's layers for real int8 CPU kernels
  (fbgemm int8 Linear, oneDNN int8 Conv2d with float output and a weight-zero-point correction), reusing the
  fake-quant scales, so each layer matches its fake-quant twin to float rounding. Measured (1 thread, DDIM end
  to end): 0.87x fp32 speed on the 8x8 digits UNet, break-even near base_channels 40 on 32x32 inputs, 2.25x at
  base_channels 256; weight bytes 0.25-0.34x fp32.

Still to come (not in this piece): AdaRound and BRECQ block reconstruction, the attention matmul
quantizers, TFMQ-DM (TIAR, finite-set calibration, cached temporal features), EDA-DM (TDAC, FBR), EfficientDM
(QALoRA, TALSQ, data-free distillation), saving an int8 model, the ``diffusekit quantize`` CLI and
``diffusekit bench quant``.
"""

from .calibration import (CalibrationSet, SplitConv2d, Trajectories, calibrate_denoiser, naive_calibration,
                          ptq4dm_calibration, qdiffusion_calibration, record_trajectories, single_step_calibration,
                          split_concat_convs, uniform_calibration)
from .int8 import Int8Conv2d, Int8Linear, export_int8, int8_layers, int8_weight_bytes
from .modules import (QuantConv2d, QuantLinear, calibrate, quant_layers, quant_state, quantize_model,
                      set_act_mode, set_quant_step, weight_bytes)
from .quantizer import RANGE_METHODS, UniformQuantizer, fake_quant, params_from_range, qrange

__all__ = ["UniformQuantizer", "RANGE_METHODS", "fake_quant", "params_from_range", "qrange",
           "QuantLinear", "QuantConv2d", "quantize_model", "quant_layers", "calibrate", "set_quant_step",
           "set_act_mode", "quant_state", "weight_bytes", "CalibrationSet", "Trajectories", "record_trajectories",
           "ptq4dm_calibration", "qdiffusion_calibration", "naive_calibration", "uniform_calibration",
           "single_step_calibration", "calibrate_denoiser", "SplitConv2d", "split_concat_convs", "Int8Conv2d",
           "Int8Linear", "export_int8", "int8_layers", "int8_weight_bytes"]
