"""Multi-head attention with diffusers' module names (to_q, to_k, to_v, to_out.0) and its processors.

A processor is a callable ``(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs)``,
as in diffusers. The core product of q, k, v is a plain function ``fn(q, k, v, heads, mask=None)`` on
``(batch, tokens, heads*dim)`` tensors, so a host can hand in its own kernel per call (``attention_fn``).
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .options import NO_OPTIONS, CallOptions, slice_size_for


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def sdpa_attention(q, k, v, heads: int, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """torch's scaled-dot-product attention; ``mask`` is bool ``(batch, 1, kv)``, True = attend."""
    if mask is not None:
        mask = mask[:, None]  # (batch, 1 head axis, 1 query axis, kv)
    out = F.scaled_dot_product_attention(_split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads),
                                         attn_mask=mask)
    return _merge_heads(out)


def bmm_attention(q, k, v, heads: int, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The classic softmax(q k^T * scale) v with explicit matrices (diffusers' AttnProcessor)."""
    q, k, v = _split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None], torch.finfo(scores.dtype).min)
    return _merge_heads(torch.matmul(scores.softmax(dim=-1), v))


# A sliced step may hold at least this many score elements (16 MiB in fp32): short sequences (temporal attention over
# F frames) then take many batch rows per step instead of one Python iteration per row.
MIN_SLICE_SCORES = 1 << 22


def slice_rows(batch: int, heads_per_step: int, q_len: int, kv_len: int) -> int:
    """Batch rows per sliced attention step: one row (``heads_per_step`` score matrices of ``q_len`` x ``kv_len``, the
    classic bound), or as many as fit in ``MIN_SLICE_SCORES`` elements when that is more."""
    per_row = max(heads_per_step * q_len * kv_len, 1)
    return max(1, min(batch, MIN_SLICE_SCORES // per_row))


def sliced_attention(q, k, v, heads: int, mask=None, slice_size: int = 1, core: Callable = sdpa_attention):
    """Attention over at most ``slice_size`` heads of a few batch rows at a time: the peak score matrix shrinks to
    ``slice_size * q_len * kv_len`` per row, with at least ``MIN_SLICE_SCORES`` elements per step (``slice_rows``).

    Each step takes a view of some rows' heads ``[h0, h1)`` (columns of the projected q/k/v), so nothing but the
    step's own work is copied, and writes into the one output tensor.
    """
    b, n, inner = q.shape
    d = inner // heads
    out = torch.empty_like(q)
    for h0 in range(0, heads, slice_size):
        h1 = min(h0 + slice_size, heads)
        cols = slice(h0 * d, h1 * d)
        step = slice_rows(b, h1 - h0, n, k.shape[1])
        for r0 in range(0, b, step):
            rows = slice(r0, r0 + step)
            out[rows, :, cols] = core(q[rows, :, cols], k[rows, :, cols], v[rows, :, cols], h1 - h0,
                                      None if mask is None else mask[rows])
    return out


class AttnProcessor2_0:
    """Default: q/k/v projections, one fused attention kernel (torch SDPA unless the call supplies another)."""

    core = staticmethod(sdpa_attention)

    def core_for(self, call_options: CallOptions) -> Callable:
        """``fn(q, k, v, heads, mask)``: what this processor does between projecting q, k, v and ``to_out``."""
        return call_options.attention_fn or self.core

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 call_options: CallOptions = NO_OPTIONS, value=None):
        q, k, v = attn.project_qkv(hidden_states, encoder_hidden_states, value)
        return attn.project_out(self.core_for(call_options)(q, k, v, attn.heads, attention_mask))


class AttnProcessor(AttnProcessor2_0):
    """Explicit matmul-softmax-matmul; what ``set_default_attn_processor`` installs, as in diffusers."""

    core = staticmethod(bmm_attention)

    def core_for(self, call_options: CallOptions) -> Callable:
        return self.core   # explicit matrices whatever the call supplies


class SlicedAttnProcessor:
    """Processes ``slice_size`` (batch x head) rows per step to bound the attention peak."""

    def __init__(self, slice_size: int):
        self.slice_size = slice_size

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 call_options: CallOptions = NO_OPTIONS, value=None):
        q, k, v = attn.project_qkv(hidden_states, encoder_hidden_states, value)
        return attn.project_out(self.core_for(call_options)(q, k, v, attn.heads, attention_mask))

    def core_for(self, call_options: CallOptions) -> Callable:
        return functools.partial(sliced_attention, slice_size=self.slice_size,
                                 core=call_options.attention_fn or sdpa_attention)


class FusedAttnProcessor2_0(AttnProcessor2_0):
    """Uses the fused ``to_qkv`` (self-attention) or ``to_kv`` (cross-attention) projection."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 call_options: CallOptions = NO_OPTIONS, value=None):
        if value is not None:
            q, k, v = attn.project_qkv(hidden_states, encoder_hidden_states, value)
        elif encoder_hidden_states is None and getattr(attn, "to_qkv", None) is not None:
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        elif encoder_hidden_states is not None and getattr(attn, "to_kv", None) is not None:
            q = attn.to_q(hidden_states)
            k, v = attn.to_kv(encoder_hidden_states).chunk(2, dim=-1)
        else:
            q, k, v = attn.project_qkv(hidden_states, encoder_hidden_states)
        return attn.project_out(self.core_for(call_options)(q, k, v, attn.heads, attention_mask))


_OWN_PROCESSORS = (AttnProcessor2_0, SlicedAttnProcessor)


def attention_core(processor, call_options: CallOptions) -> Optional[Callable]:
    """``processor.core_for(call_options)`` for the default or the sliced processor, whose q, k, v are plain
    ``to_q`` / ``to_k`` / ``to_v`` projections (a caller may project them itself); None for any other processor."""
    return processor.core_for(call_options) if type(processor) in _OWN_PROCESSORS else None


class Attention(nn.Module):
    """Self- or cross-attention: ``to_q``/``to_k``/``to_v`` without bias, ``to_out.0`` with bias."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, cross_attention_dim: Optional[int] = None,
                 *, operations, dtype=None, device=None):
        super().__init__()
        inner = heads * dim_head
        kv_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.dim_head = dim_head
        self.is_cross_attention = cross_attention_dim is not None
        factory = {"dtype": dtype, "device": device}
        self.to_q = operations.Linear(query_dim, inner, bias=False, **factory)
        self.to_k = operations.Linear(kv_dim, inner, bias=False, **factory)
        self.to_v = operations.Linear(kv_dim, inner, bias=False, **factory)
        self.to_out = nn.ModuleList([operations.Linear(inner, query_dim, bias=True, **factory), nn.Dropout(0.0)])
        self.processor = AttnProcessor2_0()
        self.to_qkv = None
        self.to_kv = None
        # Attributes diffusers' own processors read, so one of theirs can be plugged in unchanged.
        self.scale = dim_head ** -0.5
        self.spatial_norm = self.group_norm = self.norm_cross = self.norm_q = self.norm_k = None
        self.residual_connection = self.upcast_attention = self.upcast_softmax = False
        self.rescale_output_factor = 1.0

    @property
    def sliceable_head_dim(self) -> int:
        return self.heads

    def project_qkv(self, hidden_states, encoder_hidden_states=None, value=None):
        """q from ``hidden_states``; k from the context (``hidden_states`` for self-attention); v from ``value``
        when given (a host's attention patch may feed keys and values different inputs), else from the context."""
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return self.to_q(hidden_states), self.to_k(context), self.to_v(context if value is None else value)

    def project_out(self, out):
        return self.to_out[1](self.to_out[0](out))

    def processor_for(self, call_options: CallOptions):
        """The processor this call runs: the module's, or the call's attention slicing in place of this package's."""
        processor = self.processor
        if call_options.override_slice() and isinstance(processor, _OWN_PROCESSORS):
            size = slice_size_for(call_options.attention_slice, self.heads)
            processor = AttnProcessor2_0() if size is None else SlicedAttnProcessor(size)
        return processor

    def set_processor(self, processor) -> None:
        self.processor = processor

    def set_attention_slice(self, slice_size: Optional[int]) -> None:
        self.processor = AttnProcessor2_0() if slice_size is None else SlicedAttnProcessor(slice_size)

    def fuse_projections(self) -> None:
        """Adds a fused projection layer (the originals stay, as in diffusers)."""
        weights = [self.to_q.weight, self.to_k.weight, self.to_v.weight]
        target = "to_qkv" if not self.is_cross_attention else "to_kv"
        if not self.is_cross_attention:
            fused = torch.cat([w.data for w in weights])
        else:
            fused = torch.cat([w.data for w in weights[1:]])
        layer = nn.Linear(fused.shape[1], fused.shape[0], bias=False, device=fused.device, dtype=fused.dtype)
        layer.weight.data.copy_(fused)
        setattr(self, target, layer)

    def unfuse_projections(self) -> None:
        self.to_qkv = None
        self.to_kv = None

    # -- helpers with diffusers' names, for diffusers' processors
    def prepare_attention_mask(self, mask, target_length, batch_size, out_dim=3):
        if mask is None:
            return None
        return mask.repeat_interleave(self.heads, dim=0) if out_dim == 3 else mask.unsqueeze(1)

    def head_to_batch_dim(self, x, out_dim=3):
        x = _split_heads(x, self.heads)
        return x.reshape(-1, *x.shape[2:]) if out_dim == 3 else x

    def batch_to_head_dim(self, x):
        return _merge_heads(x.view(-1, self.heads, *x.shape[1:]))

    def get_attention_scores(self, query, key, attention_mask=None):
        scores = torch.matmul(query, key.transpose(-1, -2)) * self.scale
        if attention_mask is not None:
            scores = scores + attention_mask
        return scores.softmax(dim=-1).to(query.dtype)

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None,
                call_options: CallOptions = NO_OPTIONS, value=None, **cross_attention_kwargs):
        """``value``: the input of ``to_v`` when it differs from the context (a host's attention patch)."""
        processor = self.processor_for(call_options)
        # As in diffusers, a processor gets only the cross_attention_kwargs its signature names (the model warns
        # once per call about the others).
        kwargs = {k: v for k, v in cross_attention_kwargs.items() if names_keyword(processor, k)}
        if _accepts(processor, "call_options"):
            kwargs["call_options"] = call_options
            if value is not None:
                kwargs["value"] = value
        else:  # a foreign processor (e.g. diffusers')
            if value is not None:
                raise ValueError(f"attention processor {type(processor).__name__} cannot take separate values; "
                                 f"the hook that passed them needs this package's processors "
                                 f"(set_default_attn_processor or set_attn_processor(AttnProcessor2_0()))")
            if attention_mask is not None:  # theirs take an additive float mask
                attention_mask = torch.zeros(attention_mask.shape, dtype=hidden_states.dtype,
                                             device=hidden_states.device).masked_fill(~attention_mask, -10000.0)
        return processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask, **kwargs)


def _inspect_signature(call) -> tuple:
    params = inspect.signature(call).parameters
    return frozenset(params) - {"self"}, any(p.kind is p.VAR_KEYWORD for p in params.values())


# This package's processors are on every attention call (and inside torch.compile graphs): their signatures are
# read once, here; a foreign processor's is read when it is called.
_OWN_SIGNATURES = {cls: _inspect_signature(cls.__call__)
                   for cls in (AttnProcessor2_0, AttnProcessor, SlicedAttnProcessor, FusedAttnProcessor2_0)}


def is_row_independent(processor) -> bool:
    """Whether ``processor`` treats each batch row on its own (this package's processors do; a foreign one may mix
    rows, e.g. attend to another frame's keys), so the rows may be handed to it in tiles."""
    return type(processor) in _OWN_SIGNATURES


def _signature(processor):
    """(parameter names, takes **kwargs) of a processor's __call__."""
    own = _OWN_SIGNATURES.get(type(processor))
    return own if own is not None else _inspect_signature(processor.__call__)


def _accepts(processor, name: str) -> bool:
    """Whether a processor's __call__ takes keyword ``name``, by name or through ``**kwargs``."""
    names, var_kw = _signature(processor)
    return name in names or var_kw


def names_keyword(processor, name: str) -> bool:
    """Whether a processor's __call__ names parameter ``name`` (diffusers' test for cross_attention_kwargs)."""
    return name in _signature(processor)[0]
