"""Quantized checkpoints: what ``diffusekit quantize`` writes and ``diffusekit sample`` / ``eval`` read back.

The file pair is the standard training checkpoint (``training.checkpoint``: ``checkpoint.safetensors`` +
``checkpoint.json``, written atomically, no pickle) with

* ``model.<name>``: the ``state_dict`` of the fake-quantized network: each quantized layer's float weight
  (already on its quantizer's grid for methods that learn rounding or LoRA, which merge before returning),
  bias, and its quantizers' ``scale`` / ``zero_point`` / ``initialized`` (per-step rows when the method
  uses per-step activation sets);
* ``model_config``: the full-precision network's config (``build_net`` rebuilds it);
* ``extra_config = {"kind": "quantized", "schedule": <schedule.config()>, "loss": {"prediction",
  "scale_input", "sigma_data"}, "quant": {"method", "wbits", "abits", "structure", "step_times",
  "int8_kernels", "source", "calib_seconds", "finetune_seconds", "weight_bytes", "calibration"}}``.

``structure`` is the method's ``info["structure"]`` (see ``pipeline``): ``{"split": [...], "quantize_model":
{kwargs}, "attention": {kwargs} | None, "temporal_cache": bool}``. Loading replays it on the rebuilt fp net:

    net = build_net(model_config)
    split_concat_convs(net, split)                 # when split is non-empty
    quantize_model(net, wbits, abits, **quantize_model)
    quantize_attention(net, abits, **attention)    # when attention is not None
    tfmq.restore_temporal_cache(net, state, num_classes)   # when temporal_cache: TFMQ's cached features
    load_state_strict(net, state)

then wraps the net in a ``QuantDenoiser`` with the stored ``step_times``. With ``int8_kernels`` the loaded
W8A8 net is exported to real int8 CPU kernels (``int8.export_int8``): the packed int8 weights are derived from
the stored fake-quant weights and scales, so the int8 model equals the fake-quant one up to float summation
order (no separate int8 file is needed). A ``structure`` key this loader does not know, or a structure it
cannot rebuild, is refused with one CheckpointError line; ``save_quantized`` replays the load before writing, so a
result that could not be read back is never written.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ...training.checkpoint import CheckpointError, load_state_strict, save_checkpoint
from .pipeline import QuantDenoiser, QuantResult

__all__ = ["STRUCTURE_KEYS", "save_quantized", "load_quantized_denoiser", "rebuild_quantized_net", "quant_metadata"]

STRUCTURE_KEYS = ("split", "quantize_model", "attention", "temporal_cache")


def _check_structure(structure, where: str) -> dict:
    if not isinstance(structure, dict):
        raise CheckpointError(f"{where}: quant structure must be a mapping with keys {', '.join(STRUCTURE_KEYS)}")
    unknown = sorted(set(structure) - set(STRUCTURE_KEYS))
    if unknown:
        raise CheckpointError(f"{where}: unknown quant structure key(s) {', '.join(unknown)}; this diffusekit "
                              f"rebuilds {', '.join(STRUCTURE_KEYS)}")
    if not isinstance(structure.get("quantize_model", {}), dict):
        raise CheckpointError(f"{where}: quant structure 'quantize_model' must be a mapping of quantize_model kwargs")
    att = structure.get("attention")
    if att is not None and not isinstance(att, dict):
        raise CheckpointError(f"{where}: quant structure 'attention' must be null or a mapping of kwargs")
    return structure


def rebuild_quantized_net(model_config: dict, wbits: int, abits: int, structure: dict, state: dict, *,
                          where: str = "quantized checkpoint") -> torch.nn.Module:
    """The fp net built from ``model_config`` with ``structure`` replayed on it (split shortcut convs,
    ``quantize_model``, attention-matmul quantizers, TFMQ's temporal feature cache tables when
    ``temporal_cache``: ``tfmq.restore_temporal_cache`` attaches them from ``state``), then ``state`` loaded
    strictly. Raises CheckpointError (one line) on an unknown key, kwargs or weights that do not fit."""
    from ...nets import build_net
    from .calibration import split_concat_convs
    from .modules import quantize_model

    structure = _check_structure(structure, where)
    try:
        net = build_net(model_config)
        if structure.get("split"):
            split_concat_convs(net, list(structure["split"]))
        quantize_model(net, wbits, abits, **dict(structure.get("quantize_model") or {}))
        if structure.get("attention") is not None:
            from .attention import quantize_attention

            quantize_attention(net, abits, **dict(structure["attention"]))
        if structure.get("temporal_cache"):
            from .tfmq import restore_temporal_cache

            restore_temporal_cache(net, state, model_config.get("num_classes"))
    except (ValueError, TypeError, KeyError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{where}: cannot rebuild the quantized network from its structure: {msg}") from None
    load_state_strict(net, state, where)
    return net.eval()


def quant_metadata(result: QuantResult, source: dict, *, int8_kernels: bool = False) -> dict:
    """The ``extra_config`` of a quantized checkpoint (see the module docstring). ``source`` describes the
    full-precision model (e.g. {"model": "zoo:digits_unet", "calib_samples": 256, "seed": 0, "sampler": ...})."""
    from .modules import weight_bytes

    den = result.denoiser
    if "structure" not in result.info:
        raise ValueError(f"method {result.method!r} did not report info['structure']; it cannot be saved")
    step_times = getattr(den, "step_times", None)
    return {
        "kind": "quantized",
        "schedule": den.schedule.config(),
        "loss": {"prediction": den.prediction, "scale_input": den.scale_input, "sigma_data": den.sigma_data},
        "quant": {
            "method": result.method, "wbits": int(result.wbits), "abits": int(result.abits),
            "structure": result.info["structure"],
            "step_times": None if step_times is None else [float(t) for t in step_times.tolist()],
            "int8_kernels": bool(int8_kernels),
            "source": dict(source),
            "calib_seconds": float(result.calib_seconds), "finetune_seconds": float(result.finetune_seconds),
            "weight_bytes": weight_bytes(result.net),
            "calibration": result.info.get("calibration"),
        },
    }


def _denoiser_from(net: torch.nn.Module, extra: dict, where: str) -> QuantDenoiser:
    from ...core import NetworkDenoiser, schedule_from_config

    try:
        loss = extra["loss"]
        like = NetworkDenoiser(net, schedule_from_config(extra["schedule"]), loss.get("prediction", "eps"),
                               scale_input=loss.get("scale_input"), sigma_data=loss.get("sigma_data", 0.5))
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{where}: bad schedule/loss in the quantized checkpoint: {err}") from None
    step_times = extra["quant"].get("step_times")
    return QuantDenoiser(net, like, step_times=None if step_times is None else torch.tensor(step_times,
                                                                                             dtype=torch.float64))


def _export_int8(net: torch.nn.Module, where: str) -> torch.nn.Module:
    import warnings

    from .int8 import export_int8

    try:
        with warnings.catch_warnings():  # torch's deprecation notice for quantized tensor creation, once per layer
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            return export_int8(net)
    except ValueError as err:
        raise CheckpointError(f"{where}: cannot run on int8 kernels: {err}") from None


def load_quantized_denoiser(tensors: dict, meta: dict, path) -> QuantDenoiser:
    """A ``QuantDenoiser`` from a quantized checkpoint read by ``training.checkpoint.load_checkpoint``
    (``cli.load_denoiser`` calls this when ``extra_config["kind"] == "quantized"``): the fp net rebuilt from
    ``model_config``, the stored ``structure`` replayed, the state loaded strictly, and (``int8_kernels``)
    exported to int8 kernels. Raises CheckpointError with one line for anything that does not fit."""
    where = str(path)
    extra = meta.get("extra_config") or {}
    quant = extra.get("quant")
    if not isinstance(quant, dict) or not meta.get("model_config"):
        raise CheckpointError(f"{where}: quantized checkpoint lacks its quant settings or model config")
    try:
        wbits, abits = int(quant["wbits"]), int(quant["abits"])
        structure = quant["structure"]
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{where}: quantized checkpoint lacks wbits/abits/structure") from None
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    net = rebuild_quantized_net(meta["model_config"], wbits, abits, structure, state, where=where)
    if quant.get("int8_kernels"):
        _export_int8(net, where)
    return _denoiser_from(net, extra, where)


def save_quantized(out_dir, result: QuantResult, source: dict, *, int8_kernels: bool = False) -> Path:
    """Write ``result`` as a quantized checkpoint into ``out_dir`` (atomically, through
    ``training.checkpoint.save_checkpoint``); returns the folder.

    Before anything is written the load is replayed in memory (structure rebuilt, state loaded strictly, and
    with ``int8_kernels`` the int8 export run), so a result the loader could not read back raises
    CheckpointError / ValueError and leaves ``out_dir`` untouched."""
    extra = quant_metadata(result, source, int8_kernels=int8_kernels)
    where = f"{result.method} result"
    if not getattr(result.net, "config", None):
        raise ValueError(f"{where}: the network has no config, so a checkpoint of it could not be rebuilt")
    state = {k: v.detach().clone() for k, v in result.net.state_dict().items()}
    net = rebuild_quantized_net(copy.deepcopy(result.net.config), result.wbits, result.abits,
                                extra["quant"]["structure"], state, where=where)
    if int8_kernels:
        _export_int8(net, where)
    return save_checkpoint(out_dir, model=result.net, ema_model=None, optimizer=None, step=0, extra_config=extra,
                           extra_meta={"quantized_from": source.get("model")})
