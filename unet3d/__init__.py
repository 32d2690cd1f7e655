"""Pure-PyTorch UNet3DConditionModel (ModelScope text-to-video / Zeroscope), equal to diffusers' on the same weights.

Imports nothing from ComfyUI; the ComfyUI glue lives in the plugin's ``nodes/`` package.
"""
from .checkpoint_errors import (CheckpointError, CheckpointNotFoundError, CorruptCheckpointError,
                                StateDictMismatchError, UnsafeCheckpointError, WrongModelError)
from .config import UNet3DConfig
from .model import UNet3DConditionModel, UNet3DConditionOutput

__all__ = ["UNet3DConditionModel", "UNet3DConditionOutput", "UNet3DConfig", "CheckpointError",
           "CheckpointNotFoundError", "CorruptCheckpointError", "StateDictMismatchError", "UnsafeCheckpointError",
           "WrongModelError"]
