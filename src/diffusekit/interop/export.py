"""diffusekit -> diffusers: a model trained here on a diffusers backbone, written as a diffusers pipeline folder.

The network is diffusers' own (``nets.diffusers_backbones``), so the export is its ``save_pretrained``; the
schedule becomes a ``DDIMScheduler`` config with the exact betas (``trained_betas``, float64 values, or the
beta_schedule name for a named schedule), ``rescale_betas_zero_snr`` for zero terminal SNR (Lin et al. 2023,
arXiv 2305.08891) and the prediction type under diffusers' name (eps -> epsilon, v -> v_prediction, x0 ->
sample). Our discrete VP network time n = tN - 1 is diffusers' timestep, so ``UNet2DModel.from_pretrained``
gives the trained network's outputs exactly, and ``DDIMPipeline.from_pretrained(out_dir)`` samples from it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..errors import UserError
from ..io import check_output_dir

PREDICTION_TO_DIFFUSERS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
EXPORTABLE_NETS = ("diffusers_unet2d", "diffusers_dit")


def scheduler_config_for(schedule_config: dict, prediction: str) -> dict:
    """diffusers DDIMScheduler keyword arguments for one of our discrete VP schedule configs."""
    if schedule_config.get("name") != "vp_discrete":
        raise UserError(f"only discrete VP schedules export to diffusers (DDPM/DDIM betas); this model uses "
                        f"{schedule_config.get('name')!r}")
    if prediction not in PREDICTION_TO_DIFFUSERS:
        raise UserError(f"a {prediction}-prediction model has no diffusers prediction_type; exportable: "
                        f"{', '.join(PREDICTION_TO_DIFFUSERS)}")
    from ..core.schedules import schedule_from_config

    schedule = schedule_from_config(schedule_config)
    return {"num_train_timesteps": schedule.num_train_timesteps,
            "prediction_type": PREDICTION_TO_DIFFUSERS[prediction],
            "rescale_betas_zero_snr": schedule.zero_terminal_snr, "clip_sample": False,
            "timestep_spacing": "trailing", "set_alpha_to_one": True,
            "trained_betas": schedule._source_betas.tolist()}


def export_diffusers(checkpoint_dir, out_dir, *, overwrite: bool = False) -> Path:
    """Write the trained checkpoint in ``checkpoint_dir`` (EMA weights when present) as a diffusers pipeline
    folder ``out_dir`` (``model_index.json``, ``unet/`` or ``transformer/``, ``scheduler/``). Returns out_dir.

    The network must be a diffusers backbone (``--net diffusers_unet2d`` or ``diffusers_dit``), the schedule
    discrete VP and the prediction eps, v or x0. The folder is written next to ``out_dir`` and moved in place
    at the end, so an interrupted export leaves no half folder.
    """
    import diffusers

    from ..nets import build_net
    from ..training.checkpoint import CheckpointError, inference_state, load_checkpoint, load_state_strict

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"export folder {out} is not empty; pass --overwrite to replace it")
    check_output_dir(out, what="export folder")
    try:
        tensors, meta = load_checkpoint(checkpoint_dir)
    except CheckpointError as err:
        raise UserError(str(err)) from None
    net_config = meta.get("model_config") or {}
    extra = meta.get("extra_config") or {}
    if net_config.get("name") not in EXPORTABLE_NETS:
        raise UserError(f"{checkpoint_dir}: the network is {net_config.get('name')!r}; only diffusers backbones export "
                        f"({', '.join(EXPORTABLE_NETS)}): train with --net diffusers_unet2d")
    if "schedule" not in extra or "loss" not in extra:
        raise UserError(f"{checkpoint_dir}: not a `diffusekit train` checkpoint (no schedule/loss config)")
    sched_kwargs = scheduler_config_for(extra["schedule"], extra["loss"].get("prediction", "eps"))
    net = build_net(net_config)
    load_state_strict(net, inference_state(tensors), str(checkpoint_dir))
    scheduler = diffusers.DDIMScheduler(**sched_kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        if net_config["name"] == "diffusers_unet2d":
            pipe = diffusers.DDIMPipeline(unet=net.model.eval(), scheduler=scheduler)
            pipe.save_pretrained(tmp)
        else:  # a DiT: the transformer and scheduler folders (DiTPipeline also wants a VAE, which we do not have)
            net.model.eval().save_pretrained(tmp / "transformer")
            scheduler.save_pretrained(tmp / "scheduler")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
