"""The default ``operations`` namespace: the torch.nn layer classes every UNet3D layer is built from.

A host hands in another namespace with the same five class names (its own layers that skip weight init, cast
weights on the fly or stream them from another device), without this package knowing about the host.
"""
from types import SimpleNamespace

import torch.nn as nn

torch_ops = SimpleNamespace(
    Linear=nn.Linear,
    Conv2d=nn.Conv2d,
    Conv3d=nn.Conv3d,
    GroupNorm=nn.GroupNorm,
    LayerNorm=nn.LayerNorm,
)


def resolve(operations):
    return torch_ops if operations is None else operations
