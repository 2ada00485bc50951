"""The shared training core: arguments and presets, the Accelerate loop, crash-safe checkpoints."""

from .arguments import COMMON_DEFAULTS, build_parser, resolve_config
from .checkpoints import list_checkpoints, resolve_resume_path, save_checkpoint
from .batches import BatchSchedule
from .loop import TrainingState, build_optimizer_and_ema, lr_factor, train, train_step

__all__ = [
    "BatchSchedule", "COMMON_DEFAULTS", "TrainingState", "build_optimizer_and_ema", "build_parser", "list_checkpoints",
    "lr_factor", "resolve_config", "resolve_resume_path", "save_checkpoint", "train", "train_step",
]
