"""Training engine: the loop, checkpoints, logging and distributed helpers."""

from .checkpoint import CheckpointError, find_resume_checkpoint, load_checkpoint_file, save_checkpoint
from .trainer import LRSchedule, NonFiniteLossError, Trainer, TrainSettings, resolve_device

__all__ = ["CheckpointError", "LRSchedule", "NonFiniteLossError", "TrainSettings", "Trainer",
           "find_resume_checkpoint", "load_checkpoint_file", "resolve_device", "save_checkpoint"]
