"""Latent-diffusion checkpoints: a training checkpoint whose ``extra_config`` says ``kind: "latent"`` and names
the autoencoder folder it was trained in (``autoencoder: DIR``), beside the ``schedule`` and ``loss`` sections an
ordinary ``diffusekit train`` checkpoint has. ``diffusekit sample/eval --model DIR`` dispatch such a folder to
:func:`load_latent_denoiser` (``cli._CHECKPOINT_LOADERS``).

The autoencoder is referenced, not copied: a relative ``autoencoder`` path is looked up beside the checkpoint
folder first, then from the working directory. Weights are safetensors, metadata JSON, both written atomically
by ``training.checkpoint.save_checkpoint``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ...core import Schedule, schedule_from_config
from ...training import DiffusionLoss
from ...training.checkpoint import CheckpointError, load_checkpoint, load_inference_net, save_checkpoint
from .autoencoder import load_autoencoder
from .denoiser import LatentDenoiser

__all__ = ["LATENT_KIND", "latent_extra_config", "save_latent_checkpoint", "load_latent_denoiser",
           "load_latent_checkpoint"]

LATENT_KIND = "latent"


def latent_extra_config(autoencoder_dir: str | os.PathLike, schedule: Schedule, loss: DiffusionLoss) -> dict:
    """The ``extra_config`` of a latent checkpoint: kind, the autoencoder folder (absolute), schedule and loss."""
    loss_config = {k: v for k, v in loss.config().items() if k != "schedule"}
    return {"kind": LATENT_KIND, "autoencoder": str(Path(autoencoder_dir).resolve()), "schedule": schedule.config(),
            "loss": loss_config}


def save_latent_checkpoint(path_dir: str | os.PathLike, denoiser: LatentDenoiser,
                           autoencoder_dir: str | os.PathLike, *, step: int = 0) -> Path:
    """Write ``denoiser``'s network (as the checkpoint's EMA and raw weights alike) with a latent
    ``extra_config`` pointing at ``autoencoder_dir`` (where its autoencoder was saved). Returns the folder."""
    loss = DiffusionLoss(denoiser.schedule, denoiser.prediction, scale_input=denoiser.scale_input,
                         sigma_data=denoiser.sigma_data)
    return save_checkpoint(path_dir, model=denoiser.net, ema_model=denoiser.net, optimizer=None, step=int(step),
                           extra_config=latent_extra_config(autoencoder_dir, denoiser.schedule, loss))


def _autoencoder_dir(spec: str, checkpoint_dir: Path) -> Path:
    path = Path(spec)
    if not path.is_absolute() and (checkpoint_dir / path).is_dir():
        return checkpoint_dir / path
    return path


def load_latent_denoiser(tensors: dict[str, torch.Tensor], meta: dict, path: str | os.PathLike) -> LatentDenoiser:
    """A :class:`LatentDenoiser` from a loaded latent checkpoint (``training.checkpoint.load_checkpoint``'s
    ``(tensors, meta)`` of folder ``path``): EMA weights when present, eval mode. Raises CheckpointError (a
    UserError) when the checkpoint is not a latent one or its autoencoder folder is missing."""
    extra = meta.get("extra_config") or {}
    where = str(path)
    if extra.get("kind") != LATENT_KIND:
        raise CheckpointError(f"{where}: not a latent-diffusion checkpoint (kind {extra.get('kind')!r})")
    missing = [k for k in ("autoencoder", "schedule", "loss") if k not in extra]
    if missing or not meta.get("model_config"):
        raise CheckpointError(f"{where}: latent checkpoint lacks {missing or ['model_config']}")
    ae_dir = _autoencoder_dir(str(extra["autoencoder"]), Path(path))
    if not ae_dir.is_dir():
        raise CheckpointError(f"{where}: its autoencoder folder {ae_dir} does not exist; "
                              "put the autoencoder back there or fix 'autoencoder' in checkpoint.json")
    net = load_inference_net(tensors, meta, where)
    loss = extra["loss"]
    return LatentDenoiser(net, schedule_from_config(extra["schedule"]), load_autoencoder(ae_dir),
                          loss.get("prediction", "eps"), scale_input=loss.get("scale_input"),
                          sigma_data=loss.get("sigma_data", 0.5))


def load_latent_checkpoint(path_dir: str | os.PathLike) -> LatentDenoiser:
    """:func:`load_latent_denoiser` of the checkpoint folder ``path_dir``."""
    tensors, meta = load_checkpoint(path_dir)
    return load_latent_denoiser(tensors, meta, path_dir)
