"""The forward pass's return value."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch


@dataclass
class UNet3DConditionOutput:
    """``sample``: ``(batch, channels, frames, height, width)``. Indexable like diffusers' output (``out[0]``)."""

    sample: torch.Tensor

    def __getitem__(self, key: Union[int, str]):
        return self.to_tuple()[key] if isinstance(key, int) else getattr(self, key)

    def to_tuple(self):
        return (self.sample,)
