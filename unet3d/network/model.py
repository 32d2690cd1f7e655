"""The ModelScope text-to-video / Zeroscope UNet, equal to diffusers' UNet3DConditionModel on the same weights.

Video latents ``(B, C, F, H, W)`` are folded into ``B*F`` frames; 2-D layers run per frame, temporal convolutions
and temporal transformers mix frames, spatial transformers cross-attend to the text context.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from . import config as cfgmod
from . import controls
from .blocks import DownBlock3D, MidBlock3DCrossAttn, UpBlock3D
from .embeddings import TimestepEmbedding, timestep_sinusoid
from .hooks import INPUT, MIDDLE, OUTPUT, SPATIAL, TEMPORAL, LayerSite
from .ops import resolve
from .options import parse_call_options
from .outputs import UNet3DConditionOutput
from .step_cache import fresh_layers
from .transformer import TransformerTemporalModel


def _place(block: nn.Module, stage: str, first: int) -> None:
    """Tell each transformer of ``block`` where it sits (``LayerSite``): layer ``j`` has index ``first + j``."""
    for kind, name in ((SPATIAL, "attentions"), (TEMPORAL, "temp_attentions")):
        for j, transformer in enumerate(getattr(block, name, None) or []):
            transformer.site = LayerSite(kind, stage, first + j)


class UNet3DNetwork(nn.Module, controls.RuntimeControls):
    """The network of diffusers' UNet3DConditionModel (same constructor, forward, state-dict names and outputs);
    ``unet3d.UNet3DConditionModel`` adds the checkpoint methods.

    Where diffusers breaks its documented promises, this class follows the documentation:

    - ``num_attention_heads``: the real number of heads (an int, or one per level); head size = width // heads.
      Unset (the published models), ``attention_head_dim`` is the head size, as diffusers computes it.
    - ``attention_head_dim`` may be given per level (a sequence with one entry per ``block_out_channels`` entry);
      the input temporal transformer (8 heads) uses the level-0 head size.
    - ``norm_num_groups=None`` skips the output GroupNorm and SiLU; inner norms then use 32 groups.
    - ``attention_mask`` ``(batch, tokens)`` (1 keep, 0 drop) really masks text tokens in cross-attention
      (diffusers ignores it). An all-ones mask is the same as no mask, bit for bit.

    Keyword-only ``operations`` (a namespace of Linear, Conv2d, Conv3d, GroupNorm, LayerNorm classes, default
    ``torch.nn``), ``dtype`` and ``device`` are handed to every layer, so a host can control casting and loading.
    """

    _supports_gradient_checkpointing = True

    def __init__(self, sample_size: Optional[int] = None, in_channels: int = 4, out_channels: int = 4,
                 down_block_types: Sequence[str] = cfgmod.DEFAULTS["down_block_types"],
                 up_block_types: Sequence[str] = cfgmod.DEFAULTS["up_block_types"],
                 block_out_channels: Sequence[int] = cfgmod.DEFAULTS["block_out_channels"],
                 layers_per_block: int = 2, downsample_padding: int = 1, mid_block_scale_factor: float = 1,
                 act_fn: str = "silu", norm_num_groups: Optional[int] = 32, norm_eps: float = 1e-5,
                 cross_attention_dim: int = 1024, attention_head_dim: Union[int, Sequence[int]] = 64,
                 num_attention_heads: Optional[Union[int, Sequence[int]]] = None,
                 time_cond_proj_dim: Optional[int] = None,
                 *, dtype: Optional[torch.dtype] = None, device=None, operations=None):
        super().__init__()
        cfg = cfgmod.normalize(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            down_block_types=down_block_types, up_block_types=up_block_types, block_out_channels=block_out_channels,
            layers_per_block=layers_per_block, downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor, act_fn=act_fn, norm_num_groups=norm_num_groups,
            norm_eps=norm_eps, cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads, time_cond_proj_dim=time_cond_proj_dim)
        self._config = cfgmod.UNet3DConfig(cfg)
        ops = resolve(operations)
        factory = {"operations": ops, "dtype": dtype, "device": device}
        widths = cfg["block_out_channels"]
        groups, eps = cfgmod.inner_groups(cfg), cfg["norm_eps"]
        geometry = cfgmod.level_attention_geometry(cfg)
        temb = widths[0] * 4

        self.conv_in = ops.Conv2d(in_channels, widths[0], 3, padding=1, dtype=dtype, device=device)
        self.time_embedding = TimestepEmbedding(widths[0], temb, act_fn, time_cond_proj_dim, **factory)
        tin_heads, tin_dim = cfgmod.transformer_in_geometry(cfg)
        self.transformer_in = TransformerTemporalModel(tin_heads, tin_dim, widths[0], groups, **factory)

        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()  # registered before mid_block, as in diffusers (state-dict/processor order)
        for i, kind in enumerate(cfg["down_block_types"]):
            attention = (*geometry[i], cross_attention_dim) if kind.startswith("CrossAttn") else None
            self.down_blocks.append(DownBlock3D(
                widths[i - 1] if i else widths[0], widths[i], temb, layers_per_block, groups, eps, act_fn,
                i < len(widths) - 1, downsample_padding, attention, **factory))
        self.mid_block = MidBlock3DCrossAttn(widths[-1], temb, groups, eps, act_fn, mid_block_scale_factor,
                                             (*geometry[-1], cross_attention_dim), **factory)
        rev_widths, rev_geometry = list(reversed(widths)), list(reversed(geometry))
        for i, kind in enumerate(cfg["up_block_types"]):
            attention = (*rev_geometry[i], cross_attention_dim) if kind.startswith("CrossAttn") else None
            self.up_blocks.append(UpBlock3D(
                rev_widths[min(i + 1, len(widths) - 1)], rev_widths[i - 1] if i else rev_widths[0], rev_widths[i],
                temb, layers_per_block + 1, groups, eps, act_fn, i < len(widths) - 1, i, attention, **factory))

        if norm_num_groups is not None:
            self.conv_norm_out = ops.GroupNorm(norm_num_groups, widths[0], eps=eps, dtype=dtype, device=device)
            self.conv_act = nn.SiLU()
        else:
            self.conv_norm_out = self.conv_act = None
        self.conv_out = ops.Conv2d(widths[0], out_channels, 3, padding=1, dtype=dtype, device=device)
        self._number_layers()
        self._init_runtime_defaults()

    def _number_layers(self) -> None:
        """The hook indices (``unet3d.network.hooks``): each block's first skip / concatenation, each transformer's
        ``LayerSite``."""
        self.transformer_in.site = LayerSite(TEMPORAL, INPUT, 0)
        skips = 1                                        # conv_in + transformer_in is skip 0
        for block in self.down_blocks:
            block.first_skip = skips
            _place(block, INPUT, skips)
            skips += len(block.resnets) + (block.downsamplers is not None)
        _place(self.mid_block, MIDDLE, 0)
        concats = 0
        for block in self.up_blocks:
            block.first_concat = concats
            _place(block, OUTPUT, concats)
            concats += len(block.resnets)

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def config(self) -> cfgmod.UNet3DConfig:
        return self._config

    @property
    def dtype(self) -> torch.dtype:
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, sample: torch.Tensor, timestep: Union[torch.Tensor, float, int],
                encoder_hidden_states: Optional[torch.Tensor], class_labels: Optional[torch.Tensor] = None,
                timestep_cond: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                cross_attention_kwargs: Optional[Dict[str, Any]] = None,
                down_block_additional_residuals: Optional[Sequence[torch.Tensor]] = None,
                mid_block_additional_residual: Optional[torch.Tensor] = None, return_dict: bool = True,
                call_options=None):
        """Predict the noise of ``sample`` ``(batch, channels, frames, height, width)`` at ``timestep``.

        ``encoder_hidden_states``: ``(batch, tokens, dim)``, or ``(batch*frames, tokens, dim)`` for one context per
        frame. ``class_labels`` is accepted and ignored (no class embedding, as in diffusers).
        ``cross_attention_kwargs``: handed to the attention processors; keys a processor's signature does not name
        (e.g. a pipeline's LoRA ``scale``) are dropped with one warning per call, as diffusers drops them.
        ``call_options``: per-call options (see ``unet3d.network.options``); they never change the module.
        """
        opts = parse_call_options(call_options)
        xattn = cross_attention_kwargs or {}
        controls.warn_unused_cross_attention_kwargs(self, xattn)
        b, f, out_size = self._check_sample(sample)
        temb = self._embed_time(timestep, b, sample, timestep_cond).repeat_interleave(f, dim=0)
        context = self._per_frame(encoder_hidden_states, b, f, "encoder_hidden_states")
        mask = controls.text_mask(attention_mask, b, f, context)

        # 1. fold frames into the batch, embed, and mix frames once before the encoder
        h = sample.permute(0, 2, 1, 3, 4).reshape(b * f, *sample.shape[1:2], *sample.shape[3:])
        h = self.conv_in(h)
        plan = opts.step_cache
        if down_block_additional_residuals is not None or mid_block_additional_residual is not None:
            plan = None  # residuals for the deep blocks would be ignored by a cached evaluation: run in full
        cached = plan is not None and plan.reuse and plan.slot.fits(h, b * f, *h.shape[2:])
        h = self._transformer_in(plan, cached, h, f, opts, xattn)
        skip, h = opts.hooks.encoder_skip(h, 0)
        skips = [skip]
        freeu = opts.freeu if opts.override_freeu() else self._freeu
        if cached:
            h = self._cached_decoder(plan, h, skips, temb, context, mask, f, opts, xattn, freeu)
        else:
            h = self._encode_decode(plan, h, skips, temb, context, mask, f, opts, xattn, freeu, out_size,
                                    down_block_additional_residuals, mid_block_additional_residual)

        # 5. output head, unfold frames
        if self.conv_norm_out is not None:
            h = self.conv_act(self.conv_norm_out(h))
        h = self.conv_out(h)
        out = h.reshape(b, f, *h.shape[1:]).permute(0, 2, 1, 3, 4)
        return UNet3DConditionOutput(sample=out) if return_dict else (out,)

    # ----------------------------------------------------------------------------------------------- forward parts
    def _encode_decode(self, plan, h, skips, temb, context, mask, f, opts, xattn, freeu, out_size,
                       down_residuals, mid_residual):
        # 2. encoder: every layer output and every downsampler output is a skip
        for block in self.down_blocks:
            h, block_skips = self._run(block, h, temb, context, mask, f, opts, xattn)
            skips.extend(block_skips)
        skips = controls.add_residuals(skips, down_residuals)

        # 3. middle
        h = self._run(self.mid_block, h, temb, context, mask, f, opts, xattn)
        if mid_residual is not None:
            h = h + mid_residual

        # 4. decoder: each up block consumes len(resnets) skips, last first
        for block in self.up_blocks:
            block_skips = skips[-len(block.resnets):]
            skips = skips[:-len(block.resnets)]
            size = skips[-1].shape[2:] if out_size and skips else None
            if plan is None or block is not self.up_blocks[-1]:
                h = self._run(block, h, block_skips, temb, context, mask, f, opts, xattn, size, freeu)
                continue
            split = len(block.resnets) - fresh_layers(plan, len(block.resnets))  # keep the input of this layer
            h = self._run(block, h, block_skips, temb, context, mask, f, opts, xattn, size, freeu, range(split))
            plan.slot.features = h.detach() if plan.keep else None
            h = self._run(block, h, block_skips, temb, context, mask, f, opts, xattn, size, freeu,
                          range(split, len(block.resnets)))
        return h

    def _transformer_in(self, plan, cached, h, f, opts, xattn):
        """``transformer_in``; with a step-cache plan that reuses its delta, a cached call adds the kept one instead
        and a full call keeps its own (``unet3d.network.step_cache``)."""
        if plan is None or not plan.reuse_temporal_in:
            return self.transformer_in(h, f, opts, xattn)
        slot = plan.slot
        delta = slot.temporal_in if cached and slot.temporal_in_fits(h, f) else None
        if delta is None:
            delta = self.transformer_in.delta(h, f, opts, xattn)
            if not cached:
                slot.temporal_in = delta.detach()
        if not plan.keep:
            slot.temporal_in = None
        return self.transformer_in.add_delta(h, delta)

    def _cached_decoder(self, plan, h, skips, temb, context, mask, f, opts, xattn, freeu):
        """A step-cache evaluation (``unet3d.network.step_cache``): the shallow skips fresh, the deep features kept."""
        last = self.up_blocks[-1]
        count = len(last.resnets)
        fresh = fresh_layers(plan, count)
        if fresh > 1:
            _, block_skips = self._run(self.down_blocks[0], h, temb, context, mask, f, opts, xattn, fresh - 1)
            skips.extend(block_skips)
        kept = plan.slot.features
        if not plan.keep:
            plan.slot.features = None
        return self._run(last, kept, skips + [None] * (count - fresh), temb, context, mask, f, opts, xattn, None,
                         freeu, range(count - fresh, count))

    def _check_sample(self, sample):
        if sample.ndim != 5:
            raise ValueError(f"`sample` must be (batch, channels, frames, height, width); got shape "
                             f"{tuple(sample.shape)}. Fold-free video latents only: add a batch axis with [None].")
        b, c, f, height, width = sample.shape
        if c != self.config.in_channels:
            raise ValueError(f"`sample` has {c} channels (dim 1) but the model takes in_channels="
                             f"{self.config.in_channels}; is the layout (batch, channels, frames, height, width)?")
        factor = cfgmod.overall_up_factor(self.config)
        return b, f, (height % factor != 0 or width % factor != 0)

    def _embed_time(self, timestep, b, sample, timestep_cond):
        t = timestep if torch.is_tensor(timestep) else torch.tensor(
            [timestep], dtype=torch.float64 if isinstance(timestep, float) else torch.int64)
        t = t.to(sample.device).reshape(-1)
        if t.numel() not in (1, b):
            raise ValueError(f"`timestep` must be a number, a 0-d tensor or one value per video ({b}); got shape "
                             f"{tuple(timestep.shape)}")
        emb = timestep_sinusoid(t.expand(b), self.config.block_out_channels[0]).to(sample.dtype)
        return self.time_embedding(emb, timestep_cond)

    def _per_frame(self, context, b, f, name):
        if context is None:
            if any(getattr(block, "has_cross_attention", False) for block in self.down_blocks):
                raise ValueError(f"`{name}` is required: this model cross-attends to a text context")
            return None
        if context.ndim != 3:
            raise ValueError(f"`{name}` must be (batch, tokens, dim); got shape {tuple(context.shape)}")
        if context.shape[0] == b:
            return context.repeat_interleave(f, dim=0)
        if context.shape[0] == b * f:
            return context
        raise ValueError(f"`{name}` has {context.shape[0]} rows; expected one per video ({b}) or one per frame "
                         f"({b}*{f}={b * f})")

    def _run(self, block, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():  # diffusers' condition (not tied to train())
            if self._gradient_checkpointing_func is not None:
                return self._gradient_checkpointing_func(block, *args)
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)
