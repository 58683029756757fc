"""Training: per-example diffusion losses, a generic exact-resume trainer, safe checkpoints, DDP helpers.

Modules: ``config`` (TrainConfig), ``trainer`` (the loop), ``interrupt`` (SIGINT/SIGTERM), ``state`` (save /
resume of a trainer), ``checkpoint`` (the safetensors + JSON file format), ``losses``, ``distributed``.
"""

from . import distributed
from .checkpoint import CheckpointError, load_checkpoint, load_model_weights, save_checkpoint
from .config import TrainConfig
from .losses import DiffusionLoss, loss_weight, sample_times
from .trainer import Trainer, TrainingDivergedError, TrainingInterrupted

__all__ = ["CheckpointError", "DiffusionLoss", "TrainConfig", "Trainer", "TrainingDivergedError",
           "TrainingInterrupted", "distributed", "load_checkpoint", "load_model_weights", "loss_weight",
           "sample_times", "save_checkpoint"]
