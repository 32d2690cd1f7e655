"""Pure-PyTorch UNet3DConditionModel (ModelScope text-to-video / Zeroscope), equal to diffusers' on the same weights.

Imports no host application; the plugin's ``nodes/`` package is the glue to one. Layers, each importing only those
below it: ``network`` (the model maths) <- ``checkpoints`` (files, layouts, LoRA); ``video`` (frame folding and
windows) <- ``memory`` (estimates); ``model.py`` puts the public class together.
"""
from .errors import (
                     CheckpointError,
                     CheckpointNotFoundError,
                     ConfigError,
                     CorruptCheckpointError,
                     LoraError,
                     MemoryLimitError,
                     ReadOnlyError,
                     SettingError,
                     StateDictMismatchError,
                     UNet3DError,
                     UnsafeCheckpointError,
                     UnsupportedOptionError,
                     WrongModelError,
)
from .model import UNet3DConditionModel
from .network.config import UNet3DConfig
from .network.outputs import UNet3DConditionOutput

__all__ = ["UNet3DConditionModel", "UNet3DConditionOutput", "UNet3DConfig", "UNet3DError", "ConfigError",
           "CheckpointError", "CheckpointNotFoundError", "CorruptCheckpointError", "StateDictMismatchError",
           "UnsafeCheckpointError", "WrongModelError", "LoraError", "SettingError", "MemoryLimitError",
           "UnsupportedOptionError", "ReadOnlyError"]
