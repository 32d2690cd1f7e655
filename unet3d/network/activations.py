"""The one table of activation functions a config may name (``act_fn``), as torch modules."""
from __future__ import annotations

import torch.nn as nn

ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU, "relu": nn.ReLU}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()
