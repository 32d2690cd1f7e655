"""Refuse work that can never fit in memory, before anything is allocated for it.

A UNet3D call holds activations for every frame at once: 4096 frames at 576x320 need hundreds of GB, and without a
check the host grows until the machine swaps or the process is killed. ``check_call`` compares the *least* activation
memory a call could take (``unet3d.memory.estimate`` with fused attention, slicing to one row and feed-forward
chunking of one row, whichever chunking dimension is smaller) with the *total* memory of the device the call runs on
(ComfyUI's ``get_total_memory``; on CPU that is the machine's RAM). Offloading weights (lowvram) cannot help:
activations live on the device. Only calls that exceed the whole device are refused, so a run that fits with
ComfyUI's own memory management is never stopped here. The answer is computed once per call shape and kept on the
model object that asks (``cache``), so sampling steps pay one dictionary lookup.

``check_latent`` does the same for the empty latent a node is about to allocate.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import comfy.model_management as mm

from ..unet3d.errors import MemoryLimitError
from ..unet3d.memory.estimate import MemoryOptions, Workload, estimate
from ..unet3d.video.folding import frame_layout

WINDOW_CANDIDATES = (24, 16, 12, 8, 4, 2, 1)
REMEDY = ("Sample through a UNet3D Frame Batching node (between the model and the sampler) with context_length "
          "{length} or less and max_batch_rows {length}, or use fewer frames or a smaller size.")


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def least_activation_bytes(config: Mapping[str, Any], videos: int, frames: int, height: int, width: int,
                           compute_dtype: str, tokens: int = 77) -> int:
    """Activation bytes of one call on ``videos`` videos of ``frames`` frames with every memory option on."""
    workload = Workload(frames=frames, height=height, width=width, videos=videos, cond_chunks=1, tokens=tokens)
    return min(estimate(config, workload, MemoryOptions(weight_dtype=compute_dtype, compute_dtype=compute_dtype,
                                                        attention="fused", attention_slice="max",
                                                        ff_chunk=(1, dim))).activation_bytes
               for dim in (0, 1))


def _largest_window(config, height, width, compute_dtype, tokens, limit) -> Optional[int]:
    for length in WINDOW_CANDIDATES:
        if least_activation_bytes(config, 1, length, height, width, compute_dtype, tokens) <= limit:
            return length
    return None


def check_call(cache: Dict[Tuple, None], config: Mapping[str, Any], x, chunks: int,
               frames_per_video: Optional[int], compute_dtype: str, tokens: int = 77) -> None:
    """MemoryLimitError when one UNet call on the rows ``x`` (``(rows, C, h, w)``) cannot fit on ``x``'s device."""
    rows, height, width = int(x.shape[0]), int(x.shape[-2]), int(x.shape[-1])
    key = (rows, height, width, chunks, frames_per_video, compute_dtype, tokens, str(x.device))
    if key in cache:
        return
    layout = frame_layout(rows, chunks, frames_per_video)
    total = int(mm.get_total_memory(x.device))
    needed = least_activation_bytes(config, layout.videos, layout.frames, height, width, compute_dtype, tokens)
    if needed > total:
        length = _largest_window(config, height, width, compute_dtype, tokens, total)
        remedy = (REMEDY.format(length=length) if length else
                  "Even one frame at a time does not fit: use a smaller width and height.")
        raise MemoryLimitError(
            f"UNet3D: one sampling call on {layout.videos} video(s) of {layout.frames} frames at "
            f"{width * 8}x{height * 8} needs at least {gb(needed)} of working memory (with attention slicing and "
            f"feed-forward chunking at their most), but {x.device} has {gb(total)} in all. {remedy}")
    if len(cache) > 64:   # shapes seen by one model; a long session of varied sizes must not grow it forever
        cache.clear()
    cache[key] = None


def check_latent(shape: Tuple[int, ...], element_bytes: int, device, what: str) -> None:
    """MemoryLimitError when a tensor of ``shape`` is larger than the whole of ``device``'s memory."""
    nbytes = element_bytes
    for size in shape:
        nbytes *= int(size)
    total = int(mm.get_total_memory(device))
    if nbytes > total:
        raise MemoryLimitError(f"{what}: a latent of shape {tuple(shape)} takes {gb(nbytes)}, more than the "
                               f"{gb(total)} of {device} in all. Use fewer frames, fewer videos (batch_size) or a "
                               f"smaller size.")
