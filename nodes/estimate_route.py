"""``POST /unet3d/estimate`` on ComfyUI's PromptServer: the memory a UNet3D graph needs, before it is queued.

The request is parsed by ``nodes.estimate_request`` (the nodes' inputs are its schema). JSON out: ``weights``,
``activations``, ``total``, ``needed`` (bytes), ``free`` / ``total_memory`` of ComfyUI's torch device, ``fits``,
``suggestions`` (remedies with their ``needed`` bytes), ``first_fit``, ``text`` (one line for the node), and what was
assumed (dtypes, attention path, calls per step). Any bad input answers 400 with ``{"ok": false, "error": ...,
"kind": <the exception class, e.g. EstimateRequestError, CorruptCheckpointError>}``.

The work runs in a worker thread, never on the server's event loop; bodies are bounded in size and nesting before
they are parsed. The model's config comes from its checkpoint header (``unet3d.checkpoints.summary``). ComfyUI's
attention choice decides whether score matrices are materialised: ``attention_basic`` does; SDPA and xformers do not;
sub-quadratic and split attention size their chunks to the free memory, so they are counted like a fused kernel.
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Dict, Tuple

from ..unet3d import bounded_json
from ..unet3d.checkpoints.summary import CheckpointSummary, summarize_checkpoint
from ..unet3d.errors import UNet3DError
from ..unet3d.memory.fit import plan
from ..unet3d.network.parameters import count_parameters
from .estimate_request import EstimateRequest, EstimateRequestError, parse_estimate_request

log = logging.getLogger("unet3d")
ROUTE = "/unet3d/estimate"
MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 8
# The remedies of unet3d.memory.fit in this pack's words: (what to switch on, where).
REMEDY_WORDS = {"ff_chunk": "feed-forward chunking (UNet3D Feed-Forward Chunking)",
                "attention_slice": "attention slicing (UNet3D Attention Slicing)",
                "frame_batching": "frame batching (UNet3D Frame Batching)",
                "fp8_weights": "fp8 weights (Load UNet3D Model weight_dtype)",
                "stream_weights": "--lowvram (weights streamed to the device)"}


def model_summary(request: EstimateRequest) -> CheckpointSummary:
    """Header summary of the loader's choice (a UNet3D file or diffusers folder), or of a given config."""
    from ..unet3d.checkpoints.loading import validated_config
    from .loader import resolve, unet_choices
    if not request.model:
        known = validated_config(request.config, "`config`")
        return CheckpointSummary(known, count_parameters(known), "fp16", "request", "given config")
    if request.model not in unet_choices():
        raise EstimateRequestError(f"`unet_name` {request.model!r:.300} is not in the Load UNet3D Model list; pick "
                                   f"one of its choices (refresh the page after adding files)")
    paths, config_path = resolve(request.model)
    target = os.path.dirname(config_path) if config_path else paths[0]
    return summarize_checkpoint(target, request.config)


def host_dtypes(weight_dtype: str, parameters: int) -> Tuple[str, str]:
    """(storage, compute) dtype names as the loader and ComfyUI's model management would pick them."""
    import comfy.model_management as mm

    from .loader import WEIGHT_DTYPES
    from .model_base import UNet3DModelConfig, dtype_label
    if weight_dtype not in WEIGHT_DTYPES:
        raise EstimateRequestError(f"`weight_dtype` {weight_dtype!r} is not one of {list(WEIGHT_DTYPES)}")
    supported = UNet3DModelConfig.supported_inference_dtypes
    dtype = WEIGHT_DTYPES[weight_dtype] or mm.unet_dtype(model_params=parameters, supported_dtypes=supported)
    manual = mm.unet_manual_cast(dtype, mm.get_torch_device(), supported)
    return dtype_label(dtype), dtype_label(manual or dtype)


def host_attention() -> str:
    from comfy.ldm.modules import attention
    return "materialized" if attention.optimized_attention.__name__ == "attention_basic" else "fused"


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def summary_text(result: dict, free: int) -> str:
    needed = result["needed"]
    if result["fits"]:
        return f"≈ {gb(needed)} peak of {gb(free)} free — fits"
    if result["first_fit"]:
        steps = [REMEDY_WORDS[s["key"]] for s in result["suggestions"]]
        return f"≈ {gb(needed)} peak of {gb(free)} free — too big: switch on " + " + ".join(steps)
    return (f"≈ {gb(needed)} peak of {gb(free)} free — too big even with every memory option; use fewer frames "
            f"or a smaller size")


def estimate_response(body: Any) -> dict:
    """The whole answer for one request (raises UNet3DError / OSError on bad input)."""
    import comfy.model_management as mm
    request = parse_estimate_request(body)
    summary = model_summary(request)
    storage, compute = host_dtypes(request.weight_dtype, summary.parameters)
    attention = request.options.attention if request.attention_given else host_attention()
    options = replace(request.options, attention=attention, weight_dtype=storage, compute_dtype=compute)
    device = mm.get_torch_device()
    free, total = int(mm.get_free_memory(device)), int(mm.get_total_memory(device))
    result = plan(summary.config, request.workload, options, free, summary.parameters)
    est = result["estimate"]
    suggestions = [{**s, "label": REMEDY_WORDS[s["key"]]} for s in result["suggestions"]]
    return {"ok": True, "weights": est.weight_bytes, "activations": est.activation_bytes, "total": est.total_bytes,
            "needed": result["needed"], "free": free, "total_memory": total, "device": str(device),
            "fits": result["fits"], "suggestions": suggestions, "first_fit": result["first_fit"],
            "text": summary_text(result, free), "peak_at": est.peak_at, "calls_per_step": est.calls_per_step,
            "call_rows": est.call_videos * est.call_frames, "weight_dtype": storage, "compute_dtype": compute,
            "attention": attention, "parameters": summary.parameters, "config_source": summary.how}


def parse_body(raw: bytes) -> Any:
    """The JSON body, bounded in size and nesting before json.loads sees it."""
    if len(raw) > MAX_BODY_BYTES:
        raise EstimateRequestError(f"the request body is {len(raw)} bytes; at most {MAX_BODY_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EstimateRequestError("the request body is not UTF-8 text") from None
    try:
        return bounded_json.loads(text, MAX_JSON_DEPTH)
    except ValueError as exc:
        raise EstimateRequestError(f"the request body is not usable JSON ({exc})") from None


def answer(raw: bytes) -> Tuple[int, Dict[str, Any]]:
    """(HTTP status, JSON answer) for one request body; never raises."""
    try:
        return 200, estimate_response(parse_body(raw))
    except (UNet3DError, ValueError, OSError) as exc:     # bad input: the message says which and what to do
        return 400, {"ok": False, "error": str(exc), "kind": type(exc).__name__}
    except Exception as exc:  # noqa: BLE001 - a bug here must not become a traceback page; log it, answer 400
        log.exception("UNet3D estimate failed")
        return 400, {"ok": False, "error": f"the estimate failed ({type(exc).__name__}: {exc})",
                     "kind": "InternalError"}


def register() -> bool:
    """Add the route when a PromptServer is running (not in headless runs). True when added."""
    try:
        from server import PromptServer
    except Exception:  # headless host without aiohttp, or no ComfyUI at all
        return False
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return False
    import asyncio

    from aiohttp import web

    @server.routes.post(ROUTE)
    async def unet3d_estimate(request):
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return web.json_response({"ok": False, "error": f"the request body is larger than {MAX_BODY_BYTES} "
                                                            f"bytes", "kind": "EstimateRequestError"}, status=400)
        chunks, size = [], 0
        while size <= MAX_BODY_BYTES:          # read() may return part of the body: read until the end or the cap
            chunk = await request.content.read(MAX_BODY_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        raw = b"".join(chunks)
        status, body = await asyncio.get_running_loop().run_in_executor(None, answer, raw)
        return web.json_response(body, status=status)
    log.info("UNet3D: memory estimate route %s registered", ROUTE)
    return True

