"""Which memory options would make a UNet3D run fit: the estimate re-run with each remedy switched on.

Remedies, cheapest (in speed) first: feed-forward chunking, attention slicing (only where attention materialises
its scores), frame batching (windows of 16 frames, cond and uncond in separate calls), fp8 weight storage, and weight
streaming (weights offloaded and moved to the device layer by layer, so only activations and a slice of weights must
fit). Each remedy is named by a neutral key; a host says it in its own words. Pure functions.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, List, Mapping, Optional

from .estimate import MemoryEstimate, MemoryOptions, Workload, estimate

WINDOW = 16
STREAMED_WEIGHT_SHARE = 0.1  # the share of the weights kept resident while streaming, roughly (the largest layers)
REMEDY_KEYS = ("ff_chunk", "attention_slice", "frame_batching", "fp8_weights", "stream_weights")


@dataclass(frozen=True)
class Remedy:
    key: str                    # one of REMEDY_KEYS
    detail: str                 # the settings it uses, e.g. "16 frames per window, 16 rows per call"
    options: MemoryOptions
    streamed: bool = False      # weights streamed to the device (only a share resident)


def remedies(workload: Workload, opts: MemoryOptions) -> List[Remedy]:
    """The remedies not already in force, each on top of everything before it that helped."""
    out: List[Remedy] = []
    current = opts
    if opts.ff_chunk is None:
        current = replace(current, ff_chunk=(1, 1))
        out.append(Remedy("ff_chunk", "chunk 1, sequence", current))
    if opts.attention == "materialized" and opts.attention_slice is None:
        current = replace(current, attention_slice="auto")
        out.append(Remedy("attention_slice", "auto", current))
    window = min(WINDOW, workload.frames)
    if not opts.max_batch_rows or opts.max_batch_rows > window:
        current = replace(current, context_length=opts.context_length or window,
                          max_batch_rows=min(opts.context_length or window, window))
        out.append(Remedy("frame_batching", f"{current.context_length} frames per window, {current.max_batch_rows} "
                                            f"rows per call", current))
    if opts.weight_dtype not in ("fp8_e4m3fn", "fp8_e5m2"):
        current = replace(current, weight_dtype="fp8_e4m3fn",
                          compute_dtype=opts.compute_dtype or ("fp16" if opts.weight_dtype == "fp32" else
                                                               opts.weight_dtype))
        out.append(Remedy("fp8_weights", "fp8_e4m3fn", current))
    out.append(Remedy("stream_weights", "weights offloaded, streamed layer by layer", current, streamed=True))
    return out


def needed_bytes(est: MemoryEstimate, streamed: bool = False) -> int:
    weights = est.weight_bytes * STREAMED_WEIGHT_SHARE if streamed else est.weight_bytes
    return int(weights + est.activation_bytes)


def plan(config: Mapping[str, Any], workload: Workload, opts: MemoryOptions, available_bytes: Optional[int],
         parameters: Optional[int] = None) -> dict:
    """The estimate as configured, whether it fits ``available_bytes``, and the remedies that get it there.

    Returns ``{"estimate", "needed", "fits", "suggestions": [{key, detail, needed, fits}], "first_fit"}``
    (``first_fit``: the key of the first remedy that fits); with ``available_bytes`` None nothing is judged."""
    est = estimate(config, workload, opts, parameters)
    result = {"estimate": est, "needed": needed_bytes(est), "fits": None, "suggestions": [], "first_fit": None}
    if available_bytes is None:
        return result
    result["fits"] = result["needed"] <= available_bytes
    if result["fits"]:
        return result
    for remedy in remedies(workload, opts):
        needed = needed_bytes(estimate(config, workload, remedy.options, parameters), remedy.streamed)
        fits = needed <= available_bytes
        result["suggestions"].append({"key": remedy.key, "detail": remedy.detail, "needed": needed, "fits": fits})
        if fits:
            result["first_fit"] = remedy.key
            break
    return result
