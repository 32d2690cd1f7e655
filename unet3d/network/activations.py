"""The one table of activation functions a config may name (``act_fn``), as torch modules, and in-place helpers."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU, "relu": nn.ReLU}
_IN_PLACE = {nn.SiLU: F.silu, nn.Mish: F.mish, nn.ReLU: F.relu}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def _may_overwrite(fresh: torch.Tensor) -> bool:
    """Inference may overwrite a temporary nobody else holds; autograd may need it for the backward pass."""
    return not (torch.is_grad_enabled() and fresh.requires_grad)


def activate_(act: nn.Module, fresh: torch.Tensor) -> torch.Tensor:
    """``act(fresh)``, written into ``fresh`` (a temporary of the caller's) when that is allowed: one allocation
    less per activation, same values."""
    fn = _IN_PLACE.get(type(act))
    return fn(fresh, inplace=True) if fn is not None and _may_overwrite(fresh) else act(fresh)


def add_(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``fresh + other``, written into ``fresh`` (a temporary of the caller's) when the sum has its shape and dtype."""
    fits = other.dtype == fresh.dtype and other.dim() <= fresh.dim() and all(
        o in (1, f) for o, f in zip(reversed(other.shape), reversed(fresh.shape)))
    return fresh.add_(other) if fits and _may_overwrite(fresh) else fresh + other
