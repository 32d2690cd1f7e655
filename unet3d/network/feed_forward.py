"""The transformer block's feed-forward: a GEGLU projection to 4x the width (in two halves), then a linear layer
back; and chunking, which runs it on pieces of its input to bound its peak (``enable_forward_chunking``)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class GEGLU(nn.Module):
    """Linear to twice the width; value half times exact GELU of the gate half."""

    def __init__(self, dim_in: int, dim_out: int, *, operations, dtype=None, device=None):
        super().__init__()
        self.proj = operations.Linear(dim_in, dim_out * 2, dtype=dtype, device=device)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        if torch.is_grad_enabled() and value.requires_grad:
            return value * F.gelu(gate)
        return F.gelu(gate).mul_(value)  # inference: reuse gelu's output buffer (the FF peak is 8+4 widths, not 8+4+4)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, *, operations, dtype=None, device=None):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([
            GEGLU(dim, inner, operations=operations, dtype=dtype, device=device),
            nn.Dropout(0.0),
            operations.Linear(inner, dim, dtype=dtype, device=device),
        ])

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


def chunked_feed_forward(ff: nn.Module, x: torch.Tensor, chunk_size: int, dim: int) -> torch.Tensor:
    """Apply ``ff`` to ``x`` in pieces of ``chunk_size`` along ``dim`` (0 batch, 1 sequence) to bound its peak."""
    if x.shape[dim] % chunk_size != 0:
        raise ValueError(f"feed-forward chunking: size {x.shape[dim]} of dimension {dim} is not divisible by "
                         f"chunk_size {chunk_size}; pick a chunk size that divides the frame/token counts "
                         f"(1 always works)")
    return torch.cat([ff(piece) for piece in x.split(chunk_size, dim=dim)], dim=dim)
