"""Per-call options: what a caller switches for one forward call without touching the shared module.

``forward(..., call_options=...)`` takes a :class:`CallOptions` or a mapping with any of these keys:

- ``attention_slice``: ``"auto"`` | ``"max"`` | int, as ``set_attention_slice`` (per call, overrides the processors)
- ``ff_chunk``: ``(chunk_size, dim)``, as ``enable_forward_chunking``; ``None`` turns chunking off for the call
- ``freeu``: ``{"s1", "s2", "b1", "b2"}`` as ``enable_freeu``; ``None`` turns FreeU off for the call
- ``attention_fn``: ``fn(q, k, v, heads, mask=None)`` on ``(batch, tokens, heads*dim)`` tensors; ``mask`` is None or
  a bool ``(batch, 1, kv_tokens)`` tensor, True = attend
- ``hooks``: a :class:`unet3d.network.hooks.UNetHooks` called at the encoder skips and decoder concatenations
- ``step_cache``: a :class:`unet3d.network.step_cache.StepCachePlan`: reuse / keep the deep features of the last full
  evaluation (see that module); ``None`` runs the plain forward

A key that is absent means "use the model's defaults" (set by the diffusers-style methods).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Optional, Tuple, Union

from .hooks import NO_HOOKS, UNetHooks
from .step_cache import StepCachePlan

UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET"})()


@dataclass(frozen=True)
class CallOptions:
    attention_slice: Any = UNSET
    ff_chunk: Any = UNSET
    freeu: Any = UNSET
    attention_fn: Optional[Callable] = None
    hooks: UNetHooks = NO_HOOKS
    step_cache: Optional[StepCachePlan] = None

    def override_slice(self) -> bool:
        return self.attention_slice is not UNSET

    def override_chunk(self) -> bool:
        return self.ff_chunk is not UNSET

    def override_freeu(self) -> bool:
        return self.freeu is not UNSET


NO_OPTIONS = CallOptions()
_KEYS = tuple(f.name for f in fields(CallOptions))


def parse_call_options(value: Union[None, CallOptions, Mapping[str, Any]]) -> CallOptions:
    """Validate a mapping (or pass a ready CallOptions through); ValueError names the bad key or value."""
    if value is None:
        return NO_OPTIONS
    if isinstance(value, CallOptions):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"call_options must be a CallOptions or a mapping with keys {list(_KEYS)}, got "
                         f"{type(value).__name__}")
    unknown = sorted(set(value) - set(_KEYS))
    if unknown:
        raise ValueError(f"call_options has unknown keys {unknown}; valid: {', '.join(_KEYS)}")
    chunk = value.get("ff_chunk", UNSET)
    if chunk is not UNSET and chunk is not None:
        chunk = validate_chunking(*chunk)
    slice_size = value.get("attention_slice", UNSET)
    if slice_size is not UNSET and slice_size is not None:
        validate_slice_value(slice_size)
    freeu = value.get("freeu", UNSET)
    if freeu is not UNSET and freeu is not None:
        freeu = validate_freeu(**freeu)
    hooks = value.get("hooks") or NO_HOOKS
    if not isinstance(hooks, UNetHooks):
        raise ValueError(f"call_options['hooks'] must be a UNetHooks, got {type(hooks).__name__}")
    step_cache = value.get("step_cache")
    if step_cache is not None and not isinstance(step_cache, StepCachePlan):
        raise ValueError(f"call_options['step_cache'] must be a StepCachePlan (see unet3d.network.step_cache) or None, "
                         f"got {type(step_cache).__name__}")
    return CallOptions(slice_size, chunk, freeu, value.get("attention_fn"), hooks, step_cache)


def validate_chunking(chunk_size: Optional[int] = None, dim: int = 0) -> Tuple[int, int]:
    if dim not in (0, 1):
        raise ValueError(f"forward chunking `dim` must be 0 (batch) or 1 (sequence), got {dim!r}")
    chunk_size = 1 if chunk_size is None else chunk_size
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
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
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"FreeU `{key}` must be a number, got {value!r}")
    return values
