"""The exceptions of this package: one family, every message naming the file or value, what was found, what to do.

All derive from :class:`UNet3DError` (a ``ValueError``) so callers can catch one type; the not-found case is also a
``FileNotFoundError`` so generic "missing file" handling keeps working.
"""
from __future__ import annotations


class UNet3DError(ValueError):
    """Base class: something given to this package (a file, a config, a value) cannot be used as it is."""


class UnsupportedOptionError(UNet3DError, NotImplementedError):
    """A diffusers option outside this package's scope (Hub download, accelerate device maps, quantisation...).
    The message says so and what to do instead."""


class ReadOnlyError(UNet3DError, TypeError):
    """Something read-only (a model config, a forward output's keys) was asked to change."""


class ConfigError(UNet3DError):
    """A model config (constructor arguments or a config.json) is invalid."""


class CheckpointError(UNet3DError):
    """A checkpoint could not be used. The message names the file and says what to do."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The path does not exist, or a folder holds no weights we know how to read."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle-based file would need to run code (or build arbitrary Python objects) to load; it was not loaded."""


class CorruptCheckpointError(CheckpointError):
    """Empty, truncated or otherwise unreadable file."""


class WrongModelError(CheckpointError):
    """The file holds another kind of model (image UNet, SVD, AnimateDiff motion module, VAE, text encoder...)."""


class StateDictMismatchError(CheckpointError):
    """Key names or shapes in the file do not match the model built from the config."""


class SettingError(UNet3DError):
    """A setting (a node input, a call option, a field of a request) is outside what works; the message names it,
    the value found and the values that work."""


class MemoryLimitError(UNet3DError):
    """A run would need more memory than the device (or the machine) has in all, whatever is freed first; refused
    before anything is allocated. The message names the setting that makes it fit."""


class LoraError(UNet3DError):
    """A LoRA file cannot be applied to this UNet3D. The message names the file, shows keys and says what works."""


class PromptScheduleError(UNet3DError):
    """A keyframed prompt schedule cannot be used. The message names the keyframe and says how to fix it."""
