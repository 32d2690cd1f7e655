"""A widening transformer (``transformer_in``) computed on its narrow side: fewer multiply-adds, the same numbers
up to float rounding (CPU inference).

``transformer_in`` widens the first level's channels (64 in small models, 320 in Zeroscope) to 8 heads x the level's
head size (512), so ``proj_in`` has rank ``c_in`` < ``inner``. Two of its products can then be taken at that rank:

1. The first attention's q, k, v read ``norm1(y)`` with ``y = proj_in(z)``. A LayerNorm subtracts the token's mean,
   and ``y - mean(y) = A z + a`` with ``A`` proj_in's weight minus its column means and ``a`` its bias minus the bias
   mean. So ``to_q(norm1(y)) = (Wq diag(g) A) z / s + (Wq diag(g) a) / s + Wq b`` (``g``, ``b`` norm1's affine, ``s``
   the token's LayerNorm scale): one GEMM of depth ``c_in + 1`` on ``[z, 1] / s`` gives all three, in place of three
   of depth ``inner``. ``s`` comes from LayerNorm's own statistics of ``y`` (``y`` is still needed as the residual).
2. The feed-forward's last layer feeds only ``proj_out``: ``proj_out(ff_out(u) + x) = u (Wp Wf)^T + x Wp^T
   + (Wp bf + bp)``, so that GEMM is ``c_in`` wide instead of ``inner``.

At the medium benchmark (64 -> 512) this drops a third of the layer's multiply-adds. At Zeroscope's 320 -> 512 only
the second fold pays (a 321-deep GEMM runs no faster than a 512-deep one), so only that one runs.

The folded weights are built once per call from the weights as they are then (a LoRA patched in is seen). They are
read directly, so the fold runs only where proj_in, proj_out, to_q / to_k / to_v, the feed-forward's output layer
and norm1 are torch's own Linear / LayerNorm with no hooks (a host's layer may cast or patch its weight in
``forward``; ComfyUI's do, so in ComfyUI the plain path runs), the attention processor is this package's
default or sliced one, and no hook wants to see attention; it follows the call's slicing and chunking. Training,
autograd, other devices and half precision take the plain path.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .attention import attention_core, names_keyword
from .feed_forward import chunked_feed_forward
from .options import CallOptions


def _plain(module: nn.Module, kind: type) -> bool:
    """Whether ``module`` computes exactly ``kind.forward`` with its stored weights and no hooks around it."""
    return (type(module).forward is kind.forward and not module._forward_hooks
            and not module._forward_pre_hooks)


class NarrowSide:
    """The folded weights of one call of a ``_ProjectedTransformer`` (see the module docstring); ``project`` maps
    ``(rows, tokens, c_in)`` sequences to its ``(rows, tokens, c_in)`` output, as ``_project`` does."""

    def __init__(self, transformer, call_options: CallOptions, core):
        self.transformer, self.call_options, self.core = transformer, call_options, core
        block = self.block = transformer.transformer_blocks[0]
        attn = block.attn1
        w_in, b_in = transformer.proj_in.weight, transformer.proj_in.bias
        # The q, k, v GEMM of depth c_in + 1 pays only well under inner: at odd depths the BLAS runs below its best
        # rate (1024 tokens to 1536: 321 deep 11.1 ms, 512 deep 10.9 ms, 65 deep 1.7 ms).
        self.fold_qkv = 2 * (w_in.shape[1] + 1) <= w_in.shape[0]
        if self.fold_qkv:
            centred = w_in - w_in.mean(0, keepdim=True)
            shift = b_in - b_in.mean()
            w_qkv = torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight])
            scaled = w_qkv * block.norm1.weight
            self.qkv_weight = torch.cat([scaled @ centred, (scaled @ shift)[:, None]], dim=1)  # (3 inner, c_in + 1)
            self.qkv_bias = w_qkv @ block.norm1.bias
        w_out, b_out = transformer.proj_out.weight, transformer.proj_out.bias
        ff_out = block.ff.net[2]
        self.ff_out_weight = w_out @ ff_out.weight                                          # (c_in, 4 inner)
        self.ff_out_bias = w_out @ ff_out.bias + b_out

    @classmethod
    def for_call(cls, transformer, x: torch.Tensor, context, call_options: CallOptions,
                 cross_attention_kwargs) -> Optional["NarrowSide"]:
        """The folded weights when the fold applies to this call (a self-attending widening transformer in CPU
        inference), else None (the plain path runs)."""
        if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or torch.is_grad_enabled()
                or transformer.training or context is not None or len(transformer.transformer_blocks) != 1
                or transformer.proj_in.in_features >= transformer.inner_dim or call_options.hooks.wants_attention):
            return None
        block = transformer.transformer_blocks[0]
        attn = block.attn1
        processor = attn.processor_for(call_options)
        core = attention_core(processor, call_options)
        if core is None or any(names_keyword(processor, key) for key in cross_attention_kwargs or {}):
            return None
        with_bias = (transformer.proj_in, transformer.proj_out, block.ff.net[2])
        linears = (*with_bias, attn.to_q, attn.to_k, attn.to_v)
        norm = block.norm1
        if not (all(_plain(layer, nn.Linear) for layer in linears) and _plain(norm, nn.LayerNorm)
                and all(layer.bias is not None for layer in (*with_bias, norm)) and norm.weight is not None):
            return None
        return cls(transformer, call_options, core)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        block, attn = self.block, self.block.attn1
        rows, tokens, _ = z.shape
        y = self.transformer.proj_in(z)                                  # the residual, (rows, tokens, inner)
        inner = y.shape[-1]
        if self.fold_qkv:
            # LayerNorm's own 1/s per token (its output is not needed: q, k, v come from the narrow side)
            _, _, rstd = torch.native_layer_norm(y, [inner], None, None, block.norm1.eps)
            narrow = torch.cat([z, z.new_ones(rows, tokens, 1)], dim=-1).mul_(rstd)
            qkv = torch.addmm(self.qkv_bias, narrow.view(rows * tokens, -1), self.qkv_weight.t())
            q, k, v = qkv.view(rows, tokens, 3 * inner).split(inner, dim=-1)
            x = attn.project_out(self.core(q, k, v, attn.heads, None)).add_(y)
        else:
            x = attn(block.norm1(y), call_options=self.call_options) + y
        x = block.second_attention(x, self.call_options)
        h = block.norm3(x)
        chunk = block.chunk_for(self.call_options)
        out = self._feed_forward_out(h) if chunk is None else chunked_feed_forward(self._feed_forward_out, h, *chunk)
        out.view(rows * tokens, -1).addmm_(x.view(rows * tokens, inner), self.transformer.proj_out.weight.t())
        return out

    def _feed_forward_out(self, h: torch.Tensor) -> torch.Tensor:
        """GEGLU (and dropout) of ``h``, then the folded feed-forward output + proj_out: ``(..., c_in)``."""
        u = self.block.ff.net[1](self.block.ff.net[0](h))
        out = torch.addmm(self.ff_out_bias, u.reshape(-1, u.shape[-1]), self.ff_out_weight.t())
        return out.view(*u.shape[:-1], -1)
