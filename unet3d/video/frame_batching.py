"""Plan model calls over frame windows in bounded batches, and fuse their results.

Rows are in the folded layout of ``unet3d.video.folding``. Every window of ``unet3d.video.windows`` is run for every
video; one call gets whole cond chunks, or some videos of one chunk, so that at most ``max_batch_rows`` rows go to the
model at once (0 = no cap; one window of one video is the smallest call). Outputs are accumulated with the windows'
fuse weights, which sum to one per frame.

A tensor that travels with the batch is sliced per call by its first dimension: ``rows`` long -> per-frame (its
rows follow their frames, so per-frame prompts work inside windows), ``videos`` long -> per-video, else kept as is.
When one window holds every frame and no cap splits the batch, the model is called once with the original tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import torch

from .folding import FrameLayout
from .windows import FrameWindow


@dataclass(frozen=True)
class FrameCall:
    """One model call: some videos (indices over all chunks), one window of frames."""
    videos: Tuple[int, ...]
    chunks: Tuple[int, ...]   # the cond chunks those videos belong to, in order
    window: FrameWindow
    layout: FrameLayout
    whole: bool = False       # the call is the unchanged full batch

    @property
    def frames(self) -> int:
        return len(self.window.frames)

    def row_index(self) -> List[int]:
        f = self.layout.frames
        return [v * f + frame for v in self.videos for frame in self.window.frames]

    def take(self, tensor):
        """``tensor`` sliced for this call: per-frame rows, per-video rows, or unchanged."""
        if self.whole or not torch.is_tensor(tensor) or tensor.ndim == 0:
            return tensor
        if tensor.shape[0] == self.layout.rows:
            return tensor[torch.tensor(self.row_index(), device=tensor.device)]
        if tensor.shape[0] == self.layout.videos:
            return tensor[torch.tensor(self.videos, device=tensor.device)]
        return tensor

    def take_list(self, values: Sequence):
        """A per-chunk list (``cond_or_uncond``, ``uuids``) for this call."""
        if self.whole or len(values) != self.layout.chunks:
            return list(values)
        return [values[c] for c in self.chunks]


def _groups(items: Sequence[int], size: int) -> List[Tuple[int, ...]]:
    return [tuple(items[i:i + size]) for i in range(0, len(items), size)]


def plan_calls(layout: FrameLayout, windows: Sequence[FrameWindow], max_batch_rows: int = 0) -> List[FrameCall]:
    """The calls that run every window for every video with at most ``max_batch_rows`` rows each (0 = no cap)."""
    if not isinstance(max_batch_rows, int) or max_batch_rows < 0:
        raise ValueError(f"max_batch_rows must be an integer >= 0 (0 = no cap), got {max_batch_rows!r}")
    whole = len(windows) == 1 and windows[0].frames == tuple(range(layout.frames))
    if whole and (max_batch_rows == 0 or layout.rows <= max_batch_rows):
        return [FrameCall(tuple(range(layout.videos)), tuple(range(layout.chunks)), windows[0], layout, True)]
    calls = []
    v = layout.videos_per_chunk
    for window in windows:
        chunk_rows = v * len(window.frames)
        if max_batch_rows == 0 or chunk_rows <= max_batch_rows:
            per_call = layout.chunks if max_batch_rows == 0 else max(max_batch_rows // chunk_rows, 1)
            for chunks in _groups(range(layout.chunks), per_call):
                videos = tuple(c * v + i for c in chunks for i in range(v))
                calls.append(FrameCall(videos, chunks, window, layout))
        else:  # some videos of one chunk per call
            per_call = max(max_batch_rows // len(window.frames), 1)
            for c in range(layout.chunks):
                for videos in _groups(range(c * v, (c + 1) * v), per_call):
                    calls.append(FrameCall(videos, (c,), window, layout))
    return calls


def window_split(layout: FrameLayout, length: int, max_batch_rows: int = 0) -> Tuple[int, int]:
    """(calls, videos in the first and largest call) that ``plan_calls`` makes for one window of ``length`` frames,
    computed without planning them."""
    chunks, v = layout.chunks, layout.videos_per_chunk
    if max_batch_rows == 0 or v * length <= max_batch_rows:
        per_call = chunks if max_batch_rows == 0 else max(max_batch_rows // (v * length), 1)
        return -(-chunks // per_call), v * min(per_call, chunks)
    per_call = max(max_batch_rows // length, 1)
    return chunks * -(-v // per_call), min(per_call, v)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def fuse_calls(apply_call: Callable[[FrameCall], torch.Tensor], calls: Sequence[FrameCall]) -> torch.Tensor:
    """Run ``apply_call`` for every call and sum its rows into the full batch, weighted by the windows' weights."""
    if len(calls) == 1 and calls[0].whole:
        return apply_call(calls[0])
    out = None
    for call in calls:
        rows_out = apply_call(call)
        expected = len(call.videos) * call.frames
        if rows_out.shape[0] != expected:
            raise ValueError(f"the model returned {rows_out.shape[0]} rows for a call of {expected} rows "
                             f"({len(call.videos)} videos x {call.frames} frames)")
        if out is None:
            dtype = _accumulation_dtype(rows_out.dtype)
            out = torch.zeros((call.layout.rows, *rows_out.shape[1:]), dtype=dtype, device=rows_out.device)
            out_dtype = rows_out.dtype
        weights = torch.tensor(call.window.weights * len(call.videos), dtype=out.dtype, device=out.device)
        weighted = rows_out.to(out.dtype) * weights.reshape(-1, *([1] * (rows_out.ndim - 1)))
        out.index_add_(0, torch.tensor(call.row_index(), device=out.device), weighted)
    return out.to(out_dtype)
