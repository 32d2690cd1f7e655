"""The runtime controls of UNet3DConditionModel (diffusers' method names) and small forward helpers.

Methods here set the model's *defaults*; a host that shares one module between graphs switches the same things per
call through ``call_options`` instead (see ``unet3d.network.options``).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .attention import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    SlicedAttnProcessor,
    names_keyword,
)
from .options import slice_size_for, validate_chunking, validate_freeu, validate_slice_value
from .transformer import BasicTransformerBlock

_DEFAULT_PROCESSOR_TYPES = (AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor)
# IP-adapter inputs diffusers drops without a warning when a processor does not take them.
_QUIET_CROSS_ATTENTION_KEYS = frozenset({"ip_adapter_masks", "ip_hidden_states"})
log = logging.getLogger("unet3d")


class RuntimeControls:
    """Mixed into UNet3DConditionModel; every method acts on the whole model."""

    def _init_runtime_defaults(self) -> None:
        self._freeu: Optional[dict] = None
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func: Optional[Callable] = None
        self._original_processors: Optional[dict] = None

    def _attention_modules(self) -> List[Tuple[str, Attention]]:
        return [(name, m) for name, m in self.named_modules() if isinstance(m, Attention)]

    # -- processors
    @property
    def attn_processors(self) -> Dict[str, object]:
        """``"<module path>.processor" -> processor`` for every attention layer, in diffusers' order and keys."""
        return {f"{name}.processor": m.processor for name, m in self._attention_modules()}

    def set_attn_processor(self, processor) -> None:
        """One processor for every attention layer, or a dict keyed like ``attn_processors``."""
        modules = self._attention_modules()
        if isinstance(processor, dict):
            if len(processor) != len(modules):
                raise ValueError(f"A dict of processors was passed, but the number of processors {len(processor)} "
                                 f"does not match the number of attention layers: {len(modules)}. Please make sure "
                                 f"to pass {len(modules)} processor classes (keys: see `attn_processors`).")
            missing = [f"{name}.processor" for name, _ in modules if f"{name}.processor" not in processor]
            if missing:
                raise ValueError(f"set_attn_processor: no processor for {missing[:3]}"
                                 f"{' ...' if len(missing) > 3 else ''}; keys must be those of `attn_processors`")
            for name, module in modules:
                module.set_processor(processor[f"{name}.processor"])
        else:
            for _, module in modules:
                module.set_processor(processor)

    def set_default_attn_processor(self) -> None:
        """Back to the classic attention processor (diffusers' ``AttnProcessor``) everywhere."""
        current = self.attn_processors.values()
        if not all(type(p) in _DEFAULT_PROCESSOR_TYPES for p in current):
            kinds = sorted({type(p).__name__ for p in current})
            raise ValueError(f"Cannot call `set_default_attn_processor` when attention processors are of type "
                             f"{kinds}; call `unfuse_qkv_projections()` first if the projections are fused.")
        self.set_attn_processor(AttnProcessor())

    # -- slicing
    def set_attention_slice(self, slice_size: Union[str, int, Sequence[Optional[int]], None] = "auto") -> None:
        """Compute attention in slices of ``slice_size`` (batch x head) rows to save memory.

        ``"auto"``: half the heads of each layer; ``"max"``: one row at a time (least memory); an int: that many
        rows everywhere (at most the smallest head count); a list: one entry per attention layer, in
        ``attn_processors`` order; ``None``: no slicing. Results equal unsliced ones to float rounding.
        """
        modules = self._attention_modules()
        if isinstance(slice_size, (list, tuple)):
            if len(slice_size) != len(modules):
                raise ValueError(f"You have provided {len(slice_size)}, but the model has {len(modules)} attention "
                                 f"layers. Make sure to match `len(slice_size)` to be {len(modules)}.")
            sizes = list(slice_size)
        else:
            sizes = [slice_size] * len(modules)
        resolved = []
        for (name, module), size in zip(modules, sizes):
            if size is not None:
                validate_slice_value(size)
                try:
                    size = slice_size_for(size, module.heads)
                except ValueError as err:
                    raise ValueError(f"{err} (layer {name})") from None
            resolved.append(size)
        for (_, module), size in zip(modules, resolved):
            module.set_attention_slice(size)

    # -- feed-forward chunking
    def enable_forward_chunking(self, chunk_size: Optional[int] = None, dim: int = 0) -> None:
        """Run every transformer feed-forward in chunks of ``chunk_size`` along ``dim`` (0: batch, 1: sequence).

        The chunk size must divide that dimension in every transformer (1 always does). Defaults: 1 along dim 0.
        """
        chunk_size, dim = validate_chunking(chunk_size, dim)
        for module in self.modules():
            if isinstance(module, BasicTransformerBlock):
                module.set_chunk_feed_forward(chunk_size, dim)

    def disable_forward_chunking(self) -> None:
        for module in self.modules():
            if isinstance(module, BasicTransformerBlock):
                module.set_chunk_feed_forward(None, 0)

    # -- FreeU
    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """FreeU on the two coarsest decoder stages: backbone half-channels x b1/b2, skip low frequencies x s1/s2.

        Published values for ModelScope/Zeroscope: ``s1=0.9, s2=0.2, b1=1.2, b2=1.4``. A zero switches it off.
        """
        self._freeu = validate_freeu(s1, s2, b1, b2)

    def disable_freeu(self) -> None:
        self._freeu = None

    # -- fused projections
    def fuse_qkv_projections(self) -> None:
        """Fuse q/k/v (self-attention) and k/v (cross-attention) projections into one matmul each.

        As in diffusers the fused layers are added next to the originals (the state dict grows while fused);
        unlike diffusers, ``unfuse_qkv_projections`` removes them again.
        """
        if self._original_processors is None:
            self._original_processors = self.attn_processors
        for _, module in self._attention_modules():
            module.fuse_projections()
        self.set_attn_processor(FusedAttnProcessor2_0())

    def unfuse_qkv_projections(self) -> None:
        """Undo ``fuse_qkv_projections`` (a no-op if nothing is fused)."""
        if self._original_processors is None:
            return
        for _, module in self._attention_modules():
            module.unfuse_projections()
        self.set_attn_processor(self._original_processors)
        self._original_processors = None

    # -- training
    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.gradient_checkpointing

    def enable_gradient_checkpointing(self, gradient_checkpointing_func: Optional[Callable] = None) -> None:
        """Recompute each block's activations in the backward pass whenever gradients are recorded.

        ``gradient_checkpointing_func(block, *args)``: the checkpoint function, as in diffusers; default
        ``torch.utils.checkpoint.checkpoint`` (non-reentrant, RNG state preserved so dropout repeats exactly).
        """
        self._gradient_checkpointing_func = gradient_checkpointing_func
        self.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = False


def warn_unused_cross_attention_kwargs(model: RuntimeControls, kwargs: Mapping[str, Any]) -> None:
    """Warn, once per forward call and processor class, about ``cross_attention_kwargs`` keys the processors do not
    name; each attention layer drops them (diffusers warns at every layer, and likewise ignores them)."""
    if not kwargs:
        return
    processors = {type(m.processor): m.processor for _, m in model._attention_modules()}
    for name, processor in ((cls.__name__, p) for cls, p in processors.items()):
        unused = [k for k in kwargs if k not in _QUIET_CROSS_ATTENTION_KEYS and not names_keyword(processor, k)]
        if unused:
            hint = (" (`scale` is a LoRA strength in diffusers pipelines; here a LoRA is merged with its strength: "
                    "model.load_lora(lora, strength))") if "scale" in unused else ""
            log.warning("cross_attention_kwargs %s are not expected by %s and will be ignored%s.", unused, name, hint)


def text_mask(attention_mask: Optional[torch.Tensor], b: int, f: int,
              context: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(batch or batch*frames, tokens) 1/0 mask -> bool (batch*frames, 1, tokens), or None when nothing is masked.

    A row that masks every token is left unmasked (attending to nothing is undefined).
    """
    if attention_mask is None:
        return None
    if context is None:
        raise ValueError("`attention_mask` masks text tokens, but no `encoder_hidden_states` was given")
    keep = attention_mask.to(context.device) > 0.5 if attention_mask.dtype != torch.bool else attention_mask
    if keep.ndim != 2 or keep.shape[1] != context.shape[1] or keep.shape[0] not in (b, b * f):
        raise ValueError(f"`attention_mask` must be (batch, tokens) = ({b}, {context.shape[1]}) or one row per "
                         f"frame ({b * f}, {context.shape[1]}); got {tuple(attention_mask.shape)}")
    if bool(keep.all()):
        return None
    if keep.shape[0] == b and f > 1:
        keep = keep.repeat_interleave(f, dim=0)
    keep = keep | ~keep.any(dim=1, keepdim=True)
    return keep[:, None, :]


def add_residuals(skips: List[torch.Tensor], residuals: Optional[Sequence[torch.Tensor]]) -> List[torch.Tensor]:
    """Add ControlNet-style residuals to the skip features (folded layout, one per skip)."""
    if residuals is None:
        return skips
    if len(residuals) != len(skips):
        shapes = [tuple(s.shape) for s in skips]
        raise ValueError(f"`down_block_additional_residuals` has {len(residuals)} tensors; this model has "
                         f"{len(skips)} skip features, shapes {shapes}")
    return [s + r for s, r in zip(skips, residuals)]
