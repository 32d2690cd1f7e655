"""Exceptions raised while finding, reading and matching UNet3D checkpoints.

All derive from :class:`CheckpointError` (a ``ValueError``) so callers can catch one type; the not-found case is also
a ``FileNotFoundError`` so generic "missing file" handling keeps working.
"""
from __future__ import annotations


class CheckpointError(ValueError):
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
