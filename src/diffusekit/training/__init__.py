"""Training: per-example diffusion losses, a generic exact-resume trainer, safe checkpoints, DDP helpers."""

from . import distributed
from .checkpoint import CheckpointError, load_checkpoint, load_model_weights, save_checkpoint
from .losses import DiffusionLoss, loss_weight, sample_times
from .trainer import TrainConfig, Trainer, TrainingDivergedError

__all__ = ["CheckpointError", "DiffusionLoss", "TrainConfig", "Trainer", "TrainingDivergedError", "distributed",
           "load_checkpoint", "load_model_weights", "loss_weight", "sample_times", "save_checkpoint"]
