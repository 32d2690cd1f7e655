"""Per-call options: what a host switches for one forward call without touching the shared module.

``forward(..., transformer_options=...)`` takes ComfyUI's mapping shape: the host's own keys (``patches``,
``block``, ``cond_or_uncond``...) plus this package's keys under ``transformer_options["unet3d"]``:

- ``attention_slice``: ``"auto"`` | ``"max"`` | int, as ``set_attention_slice`` (per call, overrides the processors)
- ``ff_chunk``: ``(chunk_size, dim)``, as ``enable_forward_chunking``; ``None`` turns chunking off for the call
- ``freeu``: ``{"s1", "s2", "b1", "b2"}`` as ``enable_freeu``; ``None`` turns FreeU off for the call
- ``attention_fn``: ``fn(q, k, v, heads, mask=None)`` on ``(batch, tokens, heads*dim)`` tensors; ``mask`` is None or
  a bool ``(batch, 1, kv_tokens)`` tensor, True = attend.

A key that is absent means "use the model's defaults" (set by the diffusers-style methods).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Tuple

_UNSET = object()


@dataclass(frozen=True)
class CallOptions:
    attention_slice: Any = _UNSET
    ff_chunk: Any = _UNSET
    freeu: Any = _UNSET
    attention_fn: Optional[Callable] = None
    transformer_options: Optional[dict] = None

    @property
    def patches(self) -> Mapping[str, list]:
        return (self.transformer_options or {}).get("patches", {}) or {}

    def override_slice(self) -> bool:
        return self.attention_slice is not _UNSET

    def override_chunk(self) -> bool:
        return self.ff_chunk is not _UNSET

    def override_freeu(self) -> bool:
        return self.freeu is not _UNSET


NO_OPTIONS = CallOptions()


def from_transformer_options(transformer_options: Optional[dict]) -> CallOptions:
    if not transformer_options:
        return NO_OPTIONS
    ours = transformer_options.get("unet3d") or {}
    unknown = sorted(set(ours) - {"attention_slice", "ff_chunk", "freeu", "attention_fn"})
    if unknown:
        raise ValueError(f"transformer_options['unet3d'] has unknown keys {unknown}; valid: attention_slice, "
                         f"ff_chunk, freeu, attention_fn")
    chunk = ours.get("ff_chunk", _UNSET)
    if chunk is not _UNSET and chunk is not None:
        chunk = validate_chunking(*chunk)
    slice_size = ours.get("attention_slice", _UNSET)
    if slice_size is not _UNSET and slice_size is not None:
        validate_slice_value(slice_size)
    freeu = ours.get("freeu", _UNSET)
    if freeu is not _UNSET and freeu is not None:
        freeu = validate_freeu(**freeu)
    return CallOptions(slice_size, chunk, freeu, ours.get("attention_fn"), transformer_options)


def validate_chunking(chunk_size: Optional[int] = None, dim: int = 0) -> Tuple[int, int]:
    if dim not in (0, 1):
        raise ValueError(f"forward chunking `dim` must be 0 (batch) or 1 (sequence), got {dim!r}")
    chunk_size = 1 if chunk_size is None else chunk_size
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"forward chunking `chunk_size` must be a positive integer, got {chunk_size!r}")
    return chunk_size, dim


def validate_slice_value(value: Any) -> None:
    if value in ("auto", "max"):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"attention slice size must be 'auto', 'max' or a positive integer, got {value!r}")


def slice_size_for(value: Any, heads: int) -> Optional[int]:
    """Rows of (batch x heads) per attention step for one module with ``heads`` heads.

    'auto' halves the heads (at least 1, where diffusers would divide by zero on a 1-head module); 'max' is 1;
    an int is used as is and must not exceed the module's heads (as in diffusers).
    """
    if value is None:
        return None
    if value == "auto":
        return max(heads // 2, 1)
    if value == "max":
        return 1
    if value > heads:
        raise ValueError(f"attention slice size {value} has to be smaller or equal to the number of heads of every "
                         f"attention layer; one layer has {heads}. Use 'auto', 'max' or a value <= {heads}.")
    return value


def validate_freeu(s1: float, s2: float, b1: float, b2: float) -> dict:
    values = {"s1": s1, "s2": s2, "b1": b1, "b2": b2}
    for key, value in values.items():
        if not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"FreeU `{key}` must be a number, got {value!r}")
    return values
