"""Convolutional layers: the 2-D ResNet block, the temporal convolution stack, and the resamplers."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .activations import activate_, activation, add_


class ResnetBlock2D(nn.Module):
    """GroupNorm-act-conv, add the projected time embedding, GroupNorm-act-conv, plus a (1x1 conv) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float,
                 act_fn: str, output_scale_factor: float = 1.0, *, operations, dtype=None, device=None):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.norm1 = operations.GroupNorm(groups, in_channels, eps=eps, affine=True, **factory)
        self.conv1 = operations.Conv2d(in_channels, out_channels, 3, padding=1, **factory)
        self.time_emb_proj = operations.Linear(temb_channels, out_channels, **factory)
        self.norm2 = operations.GroupNorm(groups, out_channels, eps=eps, affine=True, **factory)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = operations.Conv2d(out_channels, out_channels, 3, padding=1, **factory)
        self.nonlinearity = activation(act_fn)
        self.output_scale_factor = output_scale_factor
        self.conv_shortcut = (operations.Conv2d(in_channels, out_channels, 1, **factory)
                              if in_channels != out_channels else None)

    def forward(self, x, temb):
        # activations and sums are written into the temporaries they read (inference): fewer fresh buffers
        h = self.conv1(activate_(self.nonlinearity, self.norm1(x)))
        h = add_(h, self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None])
        h = self.conv2(self.dropout(activate_(self.nonlinearity, self.norm2(h))))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = add_(h, shortcut)
        return out if self.output_scale_factor == 1 else out / self.output_scale_factor


class TemporalConvLayer(nn.Module):
    """Four GroupNorm-SiLU-(Dropout)-Conv3d stages with kernel (3,1,1) over frames, residual around all four.

    Child indices match the checkpoint keys: ``conv1.0`` norm, ``conv1.2`` conv; ``conv2..4``: ``.0`` norm,
    ``.3`` conv (index 2 is the dropout). The last conv is zero-initialised, so a fresh layer is an identity.
    """

    def __init__(self, channels: int, groups: int, dropout: float = 0.1, *, operations, dtype=None, device=None):
        super().__init__()
        factory = {"dtype": dtype, "device": device}

        def conv():
            return operations.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0), **factory)

        def norm():
            return operations.GroupNorm(groups, channels, **factory)

        self.conv1 = nn.Sequential(norm(), nn.SiLU(), conv())
        self.conv2 = nn.Sequential(norm(), nn.SiLU(), nn.Dropout(dropout), conv())
        self.conv3 = nn.Sequential(norm(), nn.SiLU(), nn.Dropout(dropout), conv())
        self.conv4 = nn.Sequential(norm(), nn.SiLU(), nn.Dropout(dropout), conv())
        last = self.conv4[-1]
        if last.weight.device.type != "meta" and hasattr(last, "reset_parameters"):
            with torch.no_grad():
                last.weight.zero_()
                last.bias.zero_()

    def forward(self, x, num_frames: int):
        n, c, h, w = x.shape
        identity = x.reshape(n // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)  # (B, C, F, H, W) view
        x = identity
        for stage in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = activate_(stage[1], stage[0](x))     # SiLU into the norm's output
            for layer in stage[2:]:                   # (dropout,) conv
                x = layer(x)
        x = identity + x                              # identity first: the sum takes the folded (B*F, ...) layout
        return x.permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv; with ``padding=0`` the input is first padded by one on the right and bottom."""

    def __init__(self, channels: int, padding: int, *, operations, dtype=None, device=None):
        super().__init__()
        self.padding = padding
        self.conv = operations.Conv2d(channels, channels, 3, stride=2, padding=padding, dtype=dtype, device=device)

    def forward(self, x):
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0)
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour upsampling by 2 (or to an exact ``output_size``), then a 3x3 conv."""

    def __init__(self, channels: int, *, operations, dtype=None, device=None):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x, output_size: Optional[Sequence[int]] = None):
        if x.shape[0] >= 64:
            x = x.contiguous()  # nearest upsampling on large non-contiguous batches is slow or fails
        if output_size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(output_size), mode="nearest")
        return self.conv(x)
