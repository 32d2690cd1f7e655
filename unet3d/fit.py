"""Which memory options would make a UNet3D graph fit: the estimate re-run with each remedy switched on.

Remedies, cheapest (in speed) first: feed-forward chunking, attention slicing (only where attention materialises
its scores), frame batching (windows of 16 frames, cond and uncond in separate calls), fp8 weight storage, and
ComfyUI's --lowvram (weights streamed in, so only activations and a slice of weights must fit). Pure functions.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, List, Mapping, Optional

from .estimate import MemoryEstimate, MemoryOptions, Workload, estimate

WINDOW = 16
LOWVRAM_WEIGHT_SHARE = 0.1   # the share of the weights --lowvram keeps resident, roughly (the largest layers)


@dataclass(frozen=True)
class Remedy:
    label: str                  # what to switch on, in the node's words
    nodes: tuple                # this pack's node types that switch it on
    options: MemoryOptions
    lowvram: bool = False


def remedies(workload: Workload, opts: MemoryOptions) -> List[Remedy]:
    """The remedies not already in force, each on top of everything before it that helped."""
    out: List[Remedy] = []
    current = opts
    if opts.ff_chunk is None:
        current = replace(current, ff_chunk=(1, 1))
        out.append(Remedy("feed-forward chunking (chunk 1, sequence)", ("UNet3DForwardChunking",), current))
    if opts.attention == "materialized" and opts.attention_slice is None:
        current = replace(current, attention_slice="auto")
        out.append(Remedy("attention slicing (auto)", ("UNet3DAttentionSlicing",), current))
    window = min(WINDOW, workload.frames)
    if not opts.max_batch_rows or opts.max_batch_rows > window:
        current = replace(current, context_length=opts.context_length or window,
                          max_batch_rows=min(opts.context_length or window, window))
        out.append(Remedy(f"frame batching ({current.context_length} frames per window, {current.max_batch_rows} "
                          f"rows per call)", ("UNet3DFrameBatching",), current))
    if opts.weight_dtype not in ("fp8_e4m3fn", "fp8_e5m2"):
        current = replace(current, weight_dtype="fp8_e4m3fn",
                          compute_dtype=opts.compute_dtype or ("fp16" if opts.weight_dtype == "fp32" else
                                                               opts.weight_dtype))
        out.append(Remedy("fp8 weights (loader weight_dtype fp8_e4m3fn)", ("UNet3DLoader",), current))
    out.append(Remedy("--lowvram (weights streamed to the device)", (), current, lowvram=True))
    return out


def needed_bytes(est: MemoryEstimate, lowvram: bool = False) -> int:
    weights = est.weight_bytes * LOWVRAM_WEIGHT_SHARE if lowvram else est.weight_bytes
    return int(weights + est.activation_bytes)


def plan(config: Mapping[str, Any], workload: Workload, opts: MemoryOptions, available_bytes: Optional[int],
         parameters: Optional[int] = None) -> dict:
    """The estimate as configured, whether it fits ``available_bytes``, and the remedies that get it there.

    Returns ``{"estimate", "needed", "fits", "suggestions": [{label, nodes, needed, fits}], "first_fit"}``; with
    ``available_bytes`` None (unknown) nothing is judged."""
    est = estimate(config, workload, opts, parameters)
    result = {"estimate": est, "needed": needed_bytes(est), "fits": None, "suggestions": [], "first_fit": None}
    if available_bytes is None:
        return result
    result["fits"] = result["needed"] <= available_bytes
    if result["fits"]:
        return result
    for remedy in remedies(workload, opts):
        needed = needed_bytes(estimate(config, workload, remedy.options, parameters), remedy.lowvram)
        fits = needed <= available_bytes
        result["suggestions"].append({"label": remedy.label, "nodes": list(remedy.nodes), "needed": needed,
                                      "fits": fits})
        if fits:
            result["first_fit"] = remedy.label
            break
    return result
