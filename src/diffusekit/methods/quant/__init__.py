"""Quantization of diffusion networks (issue 9), every method built on one shared fake-quant layer.

Layers (bottom up):

* ``quantizer``: ``UniformQuantizer``, uniform affine fake-quant with a straight-through estimator,
  per-tensor or per-channel, per-sampling-step parameter sets, range initialisation by min/max, percentile
  or MSE search, LSQ learnable step sizes.
* ``modules``: ``QuantLinear`` / ``QuantConv2d``, ``quantize_model`` (any ``nn.Module``; first/last layers
  configurable), ``calibrate``, ``set_quant_step``, ``act_quantizers``, ``weight_bytes``.
* ``attention``: ``QuantAttention`` / ``quantize_attention``, fake-quantized q, k, v and softmax
  probabilities of every ``nets.ScaledDotProductAttention`` (our UNet's attention matmuls, or any net using
  that module).
* ``reconstruction``: AdaRound (Nagel et al. 2020) and BRECQ block reconstruction (Li et al. 2021) over any
  quantized net, with optional learned activation steps, per-layer losses and QDrop.
* ``calibration``: calibration sets from the full-precision model's own trajectories (PTQ4DM's times around
  0.4 T, Q-Diffusion's time-step-aware set, naive forward-noised data) and Q-Diffusion's split shortcut.
* Methods, each ``quantize_<method>(denoiser, wbits, abits, *, traj, seed, quick, progress) -> QuantResult``
  (``pipeline``): ``quantize_minmax`` (naive baseline), ``ptq.quantize_ptq4dm`` (Shang et al. 2023),
  ``ptq.quantize_qdiffusion`` (Li et al. 2023), ``tfmq.quantize_tfmq`` (TFMQ-DM, Huang et al. 2024, TIAR +
  finite-set calibration, with the "Temporal Feature Matters" temporal feature cache),
  ``edadm.quantize_edadm`` (EDA-DM, Liu et al. 2024, TDAC + FBR), ``efficientdm.quantize_efficientdm``
  (EfficientDM, He et al. 2024, QALoRA + TALSQ + data-free distillation). ``pipeline.get_method(name)``
  looks one up by its CLI name.
* ``checkpoint``: quantized checkpoints (safetensors + JSON) that ``diffusekit sample`` / ``eval`` load;
  ``int8``: export of a W8A8 model to real int8 CPU kernels (fbgemm Linear, oneDNN Conv2d), saved and loaded
  as a plain tensor dict.

Measured figures: ``docs/methods.md`` and ``docs/benchmarks.md`` (``diffusekit bench quant``).
"""

from .attention import QuantAttention, attention_layers, quantize_attention
from .calibration import (CalibrationSet, SplitConv2d, Trajectories, calibrate_denoiser, naive_calibration,
                          ptq4dm_calibration, qdiffusion_calibration, record_trajectories, single_step_calibration,
                          split_concat_convs, uniform_calibration)
from .int8 import (Int8Conv2d, Int8Linear, export_int8, int8_layers, int8_tensors, int8_weight_bytes, load_int8,
                   load_int8_file, save_int8_file)
from .modules import (QuantConv2d, QuantLinear, act_quantizers, calibrate, quant_layers, quant_state,
                      quantize_model, set_act_mode, set_quant_step, weight_bytes)
from .pipeline import (CALIB_SAMPLER, METHODS, QuantDenoiser, QuantResult, available_methods,
                       calibration_trajectories, get_method, quantize_minmax)
from .quantizer import RANGE_METHODS, UniformQuantizer, fake_quant, params_from_range, qrange
from .reconstruction import AdaRoundQuantizer, find_blocks, reconstruct_blocks

__all__ = ["UniformQuantizer", "RANGE_METHODS", "fake_quant", "params_from_range", "qrange",
           "QuantLinear", "QuantConv2d", "quantize_model", "quant_layers", "calibrate", "set_quant_step",
           "set_act_mode", "act_quantizers", "quant_state", "weight_bytes", "QuantAttention", "quantize_attention",
           "attention_layers", "AdaRoundQuantizer", "find_blocks", "reconstruct_blocks", "CalibrationSet",
           "Trajectories", "record_trajectories", "ptq4dm_calibration", "qdiffusion_calibration",
           "naive_calibration", "uniform_calibration", "single_step_calibration", "calibrate_denoiser",
           "SplitConv2d", "split_concat_convs", "Int8Conv2d", "Int8Linear", "export_int8", "int8_layers",
           "int8_weight_bytes", "int8_tensors", "load_int8", "save_int8_file", "load_int8_file", "QuantResult",
           "QuantDenoiser", "CALIB_SAMPLER", "METHODS", "get_method", "available_methods",
           "calibration_trajectories", "quantize_minmax"]
