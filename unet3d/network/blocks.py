"""The 3-D UNet blocks: each layer is resnet -> temporal conv [-> spatial transformer -> temporal transformer].

Down blocks return their output and the list of skip features; up blocks consume skips last-first, concatenating
``[hidden, skip]`` on channels after the caller's hooks (``unet3d.network.hooks``) and FreeU have had their turn.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from .freeu import apply_freeu, freeu_stage
from .options import NO_OPTIONS, CallOptions
from .resnet import Downsample2D, ResnetBlock2D, TemporalConvLayer, Upsample2D
from .transformer import Transformer2DModel, TransformerTemporalModel


class _Layers(nn.Module):
    """Builds the per-layer module lists with diffusers' names and order (resnets, temp_convs, attentions, ...)."""

    def _build(self, in_widths: Sequence[int], out: int, temb: int, groups: int, eps: float, act_fn: str,
               attention: Optional[tuple], scale: float, factory: dict) -> None:
        self.resnets = nn.ModuleList([
            ResnetBlock2D(w, out, temb, groups, eps, act_fn, scale, **factory) for w in in_widths])
        self.temp_convs = nn.ModuleList([TemporalConvLayer(out, groups, 0.1, **factory) for _ in in_widths])
        self.has_cross_attention = attention is not None
        if attention is not None:
            heads, dim_head, cross_dim = attention
            self.attentions = nn.ModuleList([
                Transformer2DModel(heads, dim_head, out, groups, cross_dim, **factory) for _ in in_widths])
            self.temp_attentions = nn.ModuleList([
                TransformerTemporalModel(heads, dim_head, out, groups, **factory) for _ in in_widths])

    def _layer(self, i, h, temb, context, mask, num_frames, opts: CallOptions, xattn_kwargs):
        h = self.resnets[i](h, temb)
        h = self.temp_convs[i](h, num_frames)
        if self.has_cross_attention:
            h = self.attentions[i](h, context, mask, opts, xattn_kwargs)
            h = self.temp_attentions[i](h, num_frames, opts, xattn_kwargs)
        return h


class DownBlock3D(_Layers):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int, groups: int,
                 eps: float, act_fn: str, add_downsample: bool, downsample_padding: int,
                 attention: Optional[tuple] = None, *, operations, dtype=None, device=None):
        super().__init__()
        factory = {"operations": operations, "dtype": dtype, "device": device}
        widths = [in_channels] + [out_channels] * (num_layers - 1)
        self._build(widths, out_channels, temb_channels, groups, eps, act_fn, attention, 1.0, factory)
        self.downsamplers = (nn.ModuleList([Downsample2D(out_channels, downsample_padding, **factory)])
                             if add_downsample else None)

    first_skip = 0  # index of this block's first skip in the whole encoder (set by the model, for hooks)

    def forward(self, h, temb, context=None, mask=None, num_frames=1, opts: CallOptions = NO_OPTIONS,
                xattn_kwargs=None, num_layers: Optional[int] = None):
        """``num_layers``: run only the first that many layers and no downsampler (a step-cache evaluation)."""
        skips = []
        for i in range(len(self.resnets) if num_layers is None else num_layers):
            h = self._layer(i, h, temb, context, mask, num_frames, opts, xattn_kwargs)
            skip, h = opts.hooks.encoder_skip(h, self.first_skip + len(skips))
            skips.append(skip)
        if self.downsamplers is not None and num_layers is None:
            h = self.downsamplers[0](h)
            skip, h = opts.hooks.encoder_skip(h, self.first_skip + len(skips))
            skips.append(skip)
        return h, skips


class MidBlock3DCrossAttn(nn.Module):
    """resnet, temporal conv, then (spatial, temporal transformer, resnet, temporal conv)."""

    def __init__(self, channels: int, temb_channels: int, groups: int, eps: float, act_fn: str, scale: float,
                 attention: tuple, *, operations, dtype=None, device=None):
        super().__init__()
        factory = {"operations": operations, "dtype": dtype, "device": device}
        heads, dim_head, cross_dim = attention
        self.resnets = nn.ModuleList([
            ResnetBlock2D(channels, channels, temb_channels, groups, eps, act_fn, scale, **factory) for _ in range(2)])
        self.temp_convs = nn.ModuleList([TemporalConvLayer(channels, groups, 0.1, **factory) for _ in range(2)])
        self.attentions = nn.ModuleList([Transformer2DModel(heads, dim_head, channels, groups, cross_dim, **factory)])
        self.temp_attentions = nn.ModuleList([TransformerTemporalModel(heads, dim_head, channels, groups, **factory)])

    def forward(self, h, temb, context, mask=None, num_frames=1, opts: CallOptions = NO_OPTIONS, xattn_kwargs=None):
        h = self.temp_convs[0](self.resnets[0](h, temb), num_frames)
        h = self.attentions[0](h, context, mask, opts, xattn_kwargs)
        h = self.temp_attentions[0](h, num_frames, opts, xattn_kwargs)
        return self.temp_convs[1](self.resnets[1](h, temb), num_frames)


class UpBlock3D(_Layers):
    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 num_layers: int, groups: int, eps: float, act_fn: str, add_upsample: bool, resolution_idx: int,
                 attention: Optional[tuple] = None, *, operations, dtype=None, device=None):
        super().__init__()
        factory = {"operations": operations, "dtype": dtype, "device": device}
        widths = []
        for j in range(num_layers):
            skip = in_channels if j == num_layers - 1 else out_channels
            widths.append((prev_output_channel if j == 0 else out_channels) + skip)
        self._build(widths, out_channels, temb_channels, groups, eps, act_fn, attention, 1.0, factory)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, **factory)]) if add_upsample else None
        self.resolution_idx = resolution_idx

    first_concat = 0  # index of this block's first concatenation in the whole decoder (set by the model)

    def forward(self, h, skips: List[torch.Tensor], temb, context=None, mask=None, num_frames=1,
                opts: CallOptions = NO_OPTIONS, xattn_kwargs=None, upsample_size=None,
                freeu: Optional[dict] = None, layers: Optional[range] = None):
        """``layers``: run only these consecutive layers, ``h`` being the input of the first (a step-cache split);
        the upsampler runs when they end with the last layer."""
        stage = freeu_stage(self.resolution_idx, freeu)
        layers = range(len(self.resnets)) if layers is None else layers
        for i in layers:
            skip = skips[-1 - i]  # last first; the list is not consumed (checkpoint recomputation replays this)
            h, skip = opts.hooks.decoder_concat(h, skip, self.first_concat + i)
            if stage is not None:
                h, skip = apply_freeu(h, skip, *stage)
            h = torch.cat([h, skip], dim=1)
            h = self._layer(i, h, temb, context, mask, num_frames, opts, xattn_kwargs)
        if self.upsamplers is not None and layers.stop == len(self.resnets):
            h = self.upsamplers[0](h, upsample_size)
        return h


# diffusers' class names, so isinstance checks and type names in configs read the same.
CrossAttnDownBlock3D = DownBlock3D
CrossAttnUpBlock3D = UpBlock3D
