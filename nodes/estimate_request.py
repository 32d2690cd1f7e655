"""The request of ``POST /unet3d/estimate``, parsed with the nodes' own inputs as the one schema.

The web extension sends the graph as it is wired, without knowing what any input means::

    {"latent": {<UNet3DEmptyLatentVideo widget values by name>},
     "cfg": 7.5,                                         (the sampler's, when one is connected)
     "chain": [{"type": "<node type>", "inputs": {<widget values by name>}}, ...],   (sampler -> loader)
     "config": {<diffusers config.json>} | null,         (instead of a loader, for scripts)
     "attention": "fused" | "materialized" | null}        (null: what ComfyUI's attention backend does)

Every number is checked against the ``min``/``max`` of the node input it comes from (``INPUT_TYPES``) and every
setting with the node's own validation, so the route accepts exactly what the nodes accept. Node types of other packs
in the chain are skipped; of two nodes of one kind, the one nearest the sampler counts (as when sampling).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional

from ..unet3d.errors import UNet3DError
from ..unet3d.memory.estimate import ATTENTION_PATHS, MemoryOptions, Workload
from ..unet3d.network.options import validate_chunking
from ..unet3d.video.windows import WindowSettings
from .frame_batching import UNet3DFrameBatching, check_batch_rows
from .latent import UNet3DEmptyLatentVideo
from .patches import UNet3DForwardChunking, parse_slice_size

MAX_CHAIN = 64
MAX_TEXT = 4096
MAX_TOKENS = 1024


class EstimateRequestError(UNet3DError):
    """The estimate request is malformed; the message names the field."""


@dataclass(frozen=True)
class EstimateRequest:
    workload: Workload
    options: MemoryOptions
    model: Optional[str]                 # a UNet3DLoader choice
    weight_dtype: str
    config: Optional[dict]
    attention_given: bool                # False: take the host's attention backend


def _spec(node_class, name: str) -> dict:
    for section in ("required", "optional"):
        spec = node_class.INPUT_TYPES().get(section, {}).get(name)
        if spec is not None:
            return spec[1] if len(spec) > 1 else {}
    raise KeyError(name)


def node_int(node_class, name: str, value: Any, where: str) -> int:
    """``value`` as a whole number inside the node input's min/max."""
    spec = _spec(node_class, name)
    if value is None:
        value = spec.get("default")
    ok = isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, float) and math.isfinite(value) and value == int(value))
    low, high = spec.get("min", 0), spec.get("max", 2**31)
    if not ok or not low <= value <= high:
        raise EstimateRequestError(f"`{where}.{name}` must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise EstimateRequestError(f"`{where}` must be text of at most {MAX_TEXT} characters, got {value!r:.80}")
    return value


def _object(value: Any, where: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EstimateRequestError(f"`{where}` must be an object, got {type(value).__name__}")
    return value


def _checked(where: str, parse, *args):
    try:
        return parse(*args)
    except (ValueError, TypeError) as exc:
        raise EstimateRequestError(f"`{where}`: {exc}") from None


def _loader(inputs, state, where):
    state["model"] = _text(inputs.get("unet_name"), f"{where}.unet_name")
    state["weight_dtype"] = _text(inputs.get("weight_dtype", "default"), f"{where}.weight_dtype")


def _slicing(inputs, state, where):
    state["options"] = replace(state["options"], attention_slice=_checked(
        f"{where}.slice_size", parse_slice_size, _text(str(inputs.get("slice_size", "auto")), where)))


def _chunking(inputs, state, where):
    dim = inputs.get("dim", "sequence")
    if not isinstance(dim, str) or dim not in UNet3DForwardChunking.DIMS:
        raise EstimateRequestError(f"`{where}.dim` must be one of {list(UNet3DForwardChunking.DIMS)}, got {dim!r}")
    size = node_int(UNet3DForwardChunking, "chunk_size", inputs.get("chunk_size"), where)
    chunk = _checked(where, validate_chunking, size, UNet3DForwardChunking.DIMS[dim])
    state["options"] = replace(state["options"], ff_chunk=chunk)


def _frame_batching(inputs, state, where):
    values = {name: node_int(UNet3DFrameBatching, name, inputs.get(name), where)
              for name in ("context_length", "context_overlap", "context_stride", "max_batch_rows")}
    closed = inputs.get("closed_loop", False)
    if not isinstance(closed, bool):
        raise EstimateRequestError(f"`{where}.closed_loop` must be true or false, got {closed!r}")
    settings = _checked(where, WindowSettings, values["context_length"], values["context_overlap"],
                        values["context_stride"], closed)
    _checked(where, check_batch_rows, values["max_batch_rows"], values["context_length"])
    state["options"] = replace(state["options"], context_length=settings.context_length,
                               context_overlap=settings.context_overlap, context_stride=settings.context_stride,
                               closed_loop=closed, max_batch_rows=values["max_batch_rows"])


# node type -> what it changes in the estimate (nodes of other kinds pass through)
CHAIN_READERS = {"UNet3DLoader": _loader, "UNet3DAttentionSlicing": _slicing, "UNet3DForwardChunking": _chunking,
                 "UNet3DFrameBatching": _frame_batching}


def parse_estimate_request(body: Any) -> EstimateRequest:
    if not isinstance(body, dict):
        raise EstimateRequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    latent = _object(body.get("latent"), "latent")
    size = {name: node_int(UNet3DEmptyLatentVideo, name, latent.get(name), "latent")
            for name in ("width", "height", "frames", "batch_size")}
    cfg = body.get("cfg", 7.5)
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not math.isfinite(cfg):
        raise EstimateRequestError(f"`cfg` must be a finite number, got {cfg!r}")
    tokens = body.get("tokens", 77)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_TOKENS:
        raise EstimateRequestError(f"`tokens` must be a whole number from 1 to {MAX_TOKENS}, got {tokens!r}")
    workload = Workload(frames=size["frames"], height=size["height"] // 8, width=size["width"] // 8,
                        videos=size["batch_size"], cond_chunks=1 if cfg == 1 else 2, tokens=tokens)
    attention = body.get("attention")
    if attention is not None and attention not in ATTENTION_PATHS:
        raise EstimateRequestError(f"`attention` must be null or one of {list(ATTENTION_PATHS)}, got {attention!r}")
    chain = body.get("chain") or []
    if not isinstance(chain, list) or len(chain) > MAX_CHAIN:
        raise EstimateRequestError(f"`chain` must be a list of at most {MAX_CHAIN} nodes")
    state: Dict[str, Any] = {"options": MemoryOptions(attention=attention or "fused"), "model": None,
                             "weight_dtype": "default"}
    seen = set()
    for i, entry in enumerate(chain):
        entry = _object(entry, f"chain[{i}]")
        kind = entry.get("type")
        reader = CHAIN_READERS.get(kind) if isinstance(kind, str) else None
        if reader is None or kind in seen:
            continue
        seen.add(kind)
        reader(_object(entry.get("inputs"), f"chain[{i}].inputs"), state, f"chain[{i}] ({kind})")
    config = body.get("config")
    if config is not None and not isinstance(config, dict):
        raise EstimateRequestError(f"`config` must be null or a config.json object, got {type(config).__name__}")
    if state["model"] is None and config is None:
        raise EstimateRequestError("connect a Load UNet3D Model (a `UNet3DLoader` in `chain`) or give `config`")
    return EstimateRequest(workload, state["options"], state["model"], state["weight_dtype"], config,
                           attention is not None)

