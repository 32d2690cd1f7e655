"""Timestep embedding: the sinusoid (``[cos | sin]``, float32) and its two-layer MLP."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .activations import activation


def timestep_sinusoid(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) timesteps -> (N, dim) float32 ``[cos(t f_k) | sin(t f_k)]`` with ``f_k = max_period^(-k/half)``."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """``linear_2(act(linear_1(sinusoid [+ cond_proj(condition)])))``."""

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str, cond_proj_dim=None,
                 *, operations, dtype=None, device=None):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.linear_1 = operations.Linear(in_channels, time_embed_dim, **factory)
        self.cond_proj = (operations.Linear(cond_proj_dim, in_channels, bias=False, **factory)
                          if cond_proj_dim is not None else None)
        self.act = activation(act_fn)
        self.linear_2 = operations.Linear(time_embed_dim, time_embed_dim, **factory)

    def forward(self, sample, condition=None):
        if condition is not None:
            if self.cond_proj is None:
                raise ValueError("`timestep_cond` was given but this model has no `time_cond_proj_dim`; "
                                 "build it with time_cond_proj_dim set or drop timestep_cond")
            sample = sample + self.cond_proj(condition)
        return self.linear_2(self.act(self.linear_1(sample)))
