"""``POST /unet3d/estimate`` on ComfyUI's PromptServer: the memory a UNet3D graph needs, before it is queued.

JSON in (every key optional but a model or a config)::

    {"model": "<UNet3DLoader unet_name>" | null, "config": {<diffusers config.json>} | null,
     "weight_dtype": "default", "frames": 24, "width": 576, "height": 320, "batch": 1, "cfg": 7.5,
     "attention_slice": null | "auto" | "max" | 2, "ff_chunk": null | {"chunk_size": 1, "dim": "sequence"},
     "frame_batching": null | {"context_length": 16, "context_overlap": 8, "context_stride": 1,
                               "closed_loop": false, "max_batch_rows": 0},
     "attention": null | "fused" | "materialized"}

JSON out: ``weights``, ``activations``, ``total``, ``needed`` (bytes), ``free`` / ``total_memory`` of ComfyUI's torch
device, ``fits``, ``suggestions`` (remedies with their ``needed`` bytes), ``first_fit``, ``text`` (one line for the
node), and what was assumed (dtypes, attention path, calls per step). 400 with ``{"error": ...}`` on bad input.

The model's config comes from its header (``unet3d.header``; a Zeroscope file takes milliseconds). ComfyUI's
attention choice decides whether score matrices are materialised: ``attention_basic`` does; SDPA and xformers do not;
sub-quadratic and split attention size their chunks to the free memory, so they are counted like a fused kernel.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Tuple

from ..unet3d.estimate import MemoryOptions, Workload, dtype_name
from ..unet3d.fit import plan
from ..unet3d.header import CheckpointSummary, summarize_checkpoint

log = logging.getLogger("unet3d")
ROUTE = "/unet3d/estimate"
CHUNK_DIMS = {"batch": 0, "sequence": 1, 0: 0, 1: 1}
_summaries: Dict[Tuple[str, int, float], CheckpointSummary] = {}


def _int(body: Dict[str, Any], key: str, default: int, minimum: int = 1) -> int:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < minimum:
        raise ValueError(f"`{key}` must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def parse_request(body: Any) -> Tuple[Workload, MemoryOptions, str]:
    """(workload, options, weight_dtype as asked) from the JSON body; ValueError naming the bad key."""
    if not isinstance(body, dict):
        raise ValueError(f"the request body must be a JSON object, got {type(body).__name__}")
    width, height = _int(body, "width", 576, 8), _int(body, "height", 320, 8)
    cfg = body.get("cfg", 7.5)
    if not isinstance(cfg, (int, float)) or isinstance(cfg, bool):
        raise ValueError(f"`cfg` must be a number, got {cfg!r}")
    workload = Workload(frames=_int(body, "frames", 24), height=height // 8, width=width // 8,
                        videos=_int(body, "batch", 1), cond_chunks=1 if cfg == 1 else 2,
                        tokens=_int(body, "tokens", 77))
    chunk = body.get("ff_chunk")
    if chunk is not None:
        if not isinstance(chunk, dict) or chunk.get("dim", "sequence") not in CHUNK_DIMS:
            raise ValueError(f"`ff_chunk` must be null or {{\"chunk_size\": int, \"dim\": \"sequence\"|\"batch\"}}, "
                             f"got {chunk!r}")
        chunk = (_int(chunk, "chunk_size", 1), CHUNK_DIMS[chunk.get("dim", "sequence")])
    batching = body.get("frame_batching") or {}
    if not isinstance(batching, dict):
        raise ValueError(f"`frame_batching` must be null or an object, got {batching!r}")
    slice_size = body.get("attention_slice")
    if isinstance(slice_size, str) and slice_size.strip().isdigit():
        slice_size = int(slice_size)
    options = MemoryOptions(
        weight_dtype="fp16", attention=body.get("attention") or "fused", attention_slice=slice_size or None,
        ff_chunk=chunk, context_length=_int(batching, "context_length", 0, 0),
        context_overlap=_int(batching, "context_overlap", 8, 0), context_stride=_int(batching, "context_stride", 1),
        closed_loop=bool(batching.get("closed_loop", False)), max_batch_rows=_int(batching, "max_batch_rows", 0, 0))
    return workload, options, str(body.get("weight_dtype") or "default")


def model_summary(name: Optional[str], config: Optional[dict]) -> CheckpointSummary:
    """Header summary of a loader choice (cached per file size and time), or of a given config."""
    from .loader import resolve
    if not name:
        if config is None:
            raise ValueError("give `model` (a UNet3DLoader choice) or `config` (a diffusers config.json object)")
        from ..unet3d.config import UNet3DConfig
        from ..unet3d.estimate import count_parameters
        known, _ = UNet3DConfig.from_dict(config)
        return CheckpointSummary(known, count_parameters(known), "fp16", "request", "given config")
    paths, config_path = resolve(name)
    target = os.path.dirname(config_path) if config_path else paths[0]
    stat = os.stat(paths[0])
    key = (target, stat.st_size, stat.st_mtime)
    if key not in _summaries:
        _summaries[key] = summarize_checkpoint(target, config)
    return _summaries[key]


def host_dtypes(weight_dtype: str, parameters: int) -> Tuple[str, str]:
    """(storage, compute) dtype names as the loader and ComfyUI's model management would pick them."""
    import torch
    import comfy.model_management as mm
    from .loader import WEIGHT_DTYPES
    supported = [torch.float16, torch.bfloat16, torch.float32]
    if weight_dtype not in WEIGHT_DTYPES or (weight_dtype != "default" and WEIGHT_DTYPES[weight_dtype] is None):
        raise ValueError(f"`weight_dtype` {weight_dtype!r} is not one of {list(WEIGHT_DTYPES)}")
    dtype = WEIGHT_DTYPES[weight_dtype] or mm.unet_dtype(model_params=parameters, supported_dtypes=supported)
    manual = mm.unet_manual_cast(dtype, mm.get_torch_device(), supported)
    return dtype_name(dtype), dtype_name(manual or dtype)


def host_attention() -> str:
    from comfy.ldm.modules import attention
    return "materialized" if attention.optimized_attention.__name__ == "attention_basic" else "fused"


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def summary_text(result: dict, free: int) -> str:
    needed = result["needed"]
    if result["fits"]:
        return f"≈ {gb(needed)} peak of {gb(free)} free — fits"
    fix = result["first_fit"]
    if fix:
        steps = [s["label"] for s in result["suggestions"]]
        return f"≈ {gb(needed)} peak of {gb(free)} free — too big: switch on " + " + ".join(steps)
    return (f"≈ {gb(needed)} peak of {gb(free)} free — too big even with every memory option; use fewer frames "
            f"or a smaller size")


def estimate_response(body: Any) -> dict:
    """The whole answer for one request (raises ValueError / CheckpointError on bad input)."""
    import comfy.model_management as mm
    workload, options, weight_dtype = parse_request(body)
    summary = model_summary(body.get("model"), body.get("config"))
    storage, compute = host_dtypes(weight_dtype, summary.parameters)
    if body.get("attention") is None:
        options = MemoryOptions(**{**options.__dict__, "attention": host_attention()})
    options = MemoryOptions(**{**options.__dict__, "weight_dtype": storage, "compute_dtype": compute})
    device = mm.get_torch_device()
    free, total = int(mm.get_free_memory(device)), int(mm.get_total_memory(device))
    result = plan(summary.config, workload, options, free, summary.parameters)
    est = result["estimate"]
    return {"ok": True, "weights": est.weight_bytes, "activations": est.activation_bytes, "total": est.total_bytes,
            "needed": result["needed"], "free": free, "total_memory": total, "device": str(device),
            "fits": result["fits"], "suggestions": result["suggestions"], "first_fit": result["first_fit"],
            "text": summary_text(result, free), "peak_at": est.peak_at, "calls_per_step": est.calls_per_step,
            "call_rows": est.call_videos * est.call_frames, "weight_dtype": storage, "compute_dtype": compute,
            "attention": options.attention, "parameters": summary.parameters, "config_source": summary.how}


def register() -> bool:
    """Add the route when a PromptServer is running (not in headless runs). True when added."""
    try:
        from server import PromptServer
    except Exception:  # headless host without aiohttp, or no ComfyUI at all
        return False
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return False
    from aiohttp import web

    @server.routes.post(ROUTE)
    async def unet3d_estimate(request):
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"ok": False, "error": "the request body is not JSON"}, status=400)
        try:
            return web.json_response(estimate_response(body))
        except (ValueError, OSError) as exc:   # CheckpointError is a ValueError / the file went away
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
    log.info("UNet3D: memory estimate route %s registered", ROUTE)
    return True
