"""Transformer layers: the spatial Transformer2DModel, the TransformerTemporalModel, and their shared block.

Both transformers run one BasicTransformerBlock between a GroupNorm + linear projection in and a linear projection
out, with a residual around all of it. The spatial one attends over the h*w tokens of each frame (cross-attending to
text); the temporal one attends over the F frames of each spatial location (self-attention twice, no positions).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .attention import Attention, is_row_independent
from .feed_forward import FeedForward, chunked_feed_forward
from .hooks import LayerSite
from .narrow_side import NarrowSide
from .options import NO_OPTIONS, CallOptions
from .tiling import rows_per_tile


class BasicTransformerBlock(nn.Module):
    """LayerNorm -> self-attention, LayerNorm -> cross (or second self) attention, LayerNorm -> GEGLU FF."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: Optional[int],
                 *, operations, dtype=None, device=None):
        super().__init__()
        factory = {"operations": operations, "dtype": dtype, "device": device}
        self.norm1 = operations.LayerNorm(dim, eps=1e-5, dtype=dtype, device=device)
        self.attn1 = Attention(dim, heads, dim_head, None, **factory)
        self.norm2 = operations.LayerNorm(dim, eps=1e-5, dtype=dtype, device=device)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim, **factory)
        self.norm3 = operations.LayerNorm(dim, eps=1e-5, dtype=dtype, device=device)
        self.ff = FeedForward(dim, **factory)
        self._chunk_size: Optional[int] = None
        self._chunk_dim = 0

    def set_chunk_feed_forward(self, chunk_size: Optional[int], dim: int = 0) -> None:
        self._chunk_size, self._chunk_dim = chunk_size, dim

    def forward(self, x, context=None, attention_mask=None, call_options: CallOptions = NO_OPTIONS,
                cross_attention_kwargs=None, site: Optional[LayerSite] = None, feature_shape=None):
        """``site`` / ``feature_shape`` (the transformer's input shape) are handed to the call's hooks when they
        want to see attention (``UNetHooks.wants_attention``)."""
        kwargs = cross_attention_kwargs or {}
        mask = attention_mask if context is not None else None
        hooks = call_options.hooks
        if not hooks.wants_attention or site is None:
            x = self.attn1(self.norm1(x), call_options=call_options, **kwargs) + x
            return self._feed_forward(self.second_attention(x, call_options, context, mask, kwargs), call_options)

        def run(layer, layer_mask):
            def attend(hidden, ctx, value):
                return layer(hidden, ctx, layer_mask if ctx is not None else None, call_options=call_options,
                             value=value, **kwargs)
            return attend
        x = hooks.attention(site, 1, self.attn1, self.norm1(x), None, run(self.attn1, None), feature_shape) + x
        x = hooks.between_attentions(site, x)
        x = hooks.attention(site, 2, self.attn2, self.norm2(x), context, run(self.attn2, mask), feature_shape) + x
        return self._feed_forward(x, call_options)

    def second_attention(self, x, call_options: CallOptions, context=None, mask=None, kwargs=None):
        """``attn2(norm2(x)) + x``: cross-attention to ``context``, or a second self-attention without one."""
        return self.attn2(self.norm2(x), context, mask, call_options=call_options, **(kwargs or {})) + x

    def chunk_for(self, call_options: CallOptions):
        """``(chunk_size, dim)`` of this call's feed-forward chunking, or None."""
        return call_options.ff_chunk if call_options.override_chunk() else (
            None if self._chunk_size is None else (self._chunk_size, self._chunk_dim))

    def tileable(self, call_options: CallOptions) -> bool:
        """Whether this block may run on a subset of its rows (``unet3d.network.tiling``): no hook sees its attention,
        its processors are this package's, and no feed-forward chunking by rows asks for divisible row counts."""
        chunk = self.chunk_for(call_options)
        return (not call_options.hooks.wants_attention and (chunk is None or chunk[1] == 1)
                and is_row_independent(self.attn1.processor) and is_row_independent(self.attn2.processor))

    def _feed_forward(self, x, call_options: CallOptions):
        chunk = self.chunk_for(call_options)
        h = self.norm3(x)
        h = self.ff(h) if chunk is None else chunked_feed_forward(self.ff, h, *chunk)
        return h + x


class _ProjectedTransformer(nn.Module):
    """GroupNorm -> Linear proj_in -> one BasicTransformerBlock -> Linear proj_out (diffusers' names)."""

    site: Optional[LayerSite] = None  # where it sits in the UNet (set by the model, for hooks)

    def __init__(self, heads: int, dim_head: int, in_channels: int, groups: int, cross_attention_dim: Optional[int],
                 *, operations, dtype=None, device=None):
        super().__init__()
        inner = heads * dim_head
        self.inner_dim = inner
        factory = {"dtype": dtype, "device": device}
        self.norm = operations.GroupNorm(groups, in_channels, eps=1e-6, affine=True, **factory)
        self.proj_in = operations.Linear(in_channels, inner, **factory)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim, operations=operations, **factory)])
        self.proj_out = operations.Linear(inner, in_channels, **factory)

    def _rows_to_rows(self, rows, context, mask, call_options, cross_attention_kwargs, feature_shape):
        """proj_in -> blocks -> proj_out on ``(rows, tokens, channels)``; on CPU in row tiles (``tiling``), and for a
        widening transformer on its narrow side where that applies (``narrow_side``)."""
        n, tokens, _ = rows.shape
        step = rows_per_tile(rows, n, tokens, self.inner_dim)   # cheap device / autograd / compile test first
        if step is not None and not (all(block.tileable(call_options) for block in self.transformer_blocks)
                                     and (context is None or context.shape[0] == n)):
            step = None
        narrow = NarrowSide.for_call(self, rows, context, call_options, cross_attention_kwargs)

        def project(part_rows, part_context, part_mask):
            if narrow is not None:
                return narrow.project(part_rows)
            return self._project(part_rows, part_context, part_mask, call_options, cross_attention_kwargs,
                                 feature_shape)
        if step is None:
            return project(rows, context, mask)
        out = None
        for r0 in range(0, n, step):
            part = slice(r0, r0 + step)
            y = project(rows[part], None if context is None else context[part], None if mask is None else mask[part])
            if out is None:
                out = y.new_empty((n, *y.shape[1:]))
            out[part] = y
        return out

    def _project(self, x, context, mask, call_options, cross_attention_kwargs, feature_shape):
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context, mask, call_options, cross_attention_kwargs, self.site, feature_shape)
        return self.proj_out(x)


class Transformer2DModel(_ProjectedTransformer):
    """Spatial transformer on folded frames ``(B*F, C, H, W)``, cross-attending to the text context."""

    def forward(self, x, context, attention_mask=None, call_options: CallOptions = NO_OPTIONS,
                cross_attention_kwargs=None):
        n, c, h, w = x.shape
        residual = x
        x = self.norm(x).permute(0, 2, 3, 1).reshape(n, h * w, c)
        x = self._rows_to_rows(x, context, attention_mask, call_options, cross_attention_kwargs, residual.shape)
        # the residual first: the sum is written in its (n, c, h, w) layout straight from the token rows (no copy)
        return torch.add(residual, x.view(n, h, w, c).permute(0, 3, 1, 2))


class TransformerTemporalModel(_ProjectedTransformer):
    """Temporal transformer: every spatial location of a clip is a sequence of F frames (self-attention only)."""

    def __init__(self, heads: int, dim_head: int, in_channels: int, groups: int,
                 *, operations, dtype=None, device=None):
        # No cross-attention width: diffusers builds attn2 as a second self-attention here (double_self_attention).
        super().__init__(heads, dim_head, in_channels, groups, None, operations=operations, dtype=dtype,
                         device=device)

    def forward(self, x, num_frames: int, call_options: CallOptions = NO_OPTIONS, cross_attention_kwargs=None):
        return self.add_delta(x, self.delta(x, num_frames, call_options, cross_attention_kwargs))

    def delta(self, x, num_frames: int, call_options: CallOptions = NO_OPTIONS, cross_attention_kwargs=None):
        """What the layer adds to its input ``(B*F, C, H, W)``, as a ``(B, F, C, H, W)`` view of the sequence rows
        (the step cache keeps it between steps)."""
        n, c, h, w = x.shape
        b = n // num_frames
        x = self._rows_to_rows(self._normed_sequences(x.reshape(b, num_frames, c, h, w)), None, None, call_options,
                               cross_attention_kwargs, (n, c, h, w))
        return x.view(b, h, w, num_frames, c).permute(0, 3, 4, 1, 2)

    @staticmethod
    def add_delta(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``x + delta`` in ``x``'s folded layout; the input first, so the sum is written straight from the sequence
        rows (no copy)."""
        return torch.add(x.reshape(delta.shape), delta).view(x.shape)

    def _normed_sequences(self, frames: torch.Tensor) -> torch.Tensor:
        """GroupNorm of ``(B, F, C, H, W)`` frames with statistics over frames and pixels, as ``(B*H*W, F, C)``
        sequence rows for ``proj_in``, made contiguous: on the strided view ``proj_in`` falls to a batched matmul
        with an expanded weight, many times slower. The norm runs on the ``(B, C, F, H, W)`` layout diffusers uses,
        so its numbers are diffusers' bit for bit."""
        b, f, c, h, w = frames.shape
        x = self.norm(frames.permute(0, 2, 1, 3, 4))
        return x.permute(0, 3, 4, 2, 1).reshape(b * h * w, f, c).contiguous()
