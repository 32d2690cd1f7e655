"""Frame windows for sampling long videos: which frames the UNet sees together, and how overlapping results fuse.

A video of ``num_frames`` frames is cut into windows of ``context_length`` frames that overlap by at least
``context_overlap`` frames, spread evenly (the fewest windows that keep that overlap). ``closed_loop`` lets windows
wrap from the last frame to the first, so a looping video has no seam. ``context_stride`` > 1 adds strided levels:
at level ``d`` (2, 4, ... up to ``2**(context_stride-1)``, as in AnimateDiff's uniform schedule) every ``d``-th frame
forms a subsequence that is windowed the same way, linking frames far apart. A level is used only when each of its
subsequences holds a full window (``d * context_length <= num_frames``).

Each window carries one fuse weight per frame (``flat``, ``pyramid`` or ``overlap-linear``), normalised so that the
weights of every frame, summed over all windows holding it, are one. When ``context_length >= num_frames`` the
layout is a single window of all frames in order with weight one (so sampling can be bit-identical to no windows).
Pure functions, deterministic, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

FUSE_METHODS = ("flat", "pyramid", "overlap-linear")
DEFAULT_CONTEXT_LENGTH = 24
DEFAULT_CONTEXT_OVERLAP = 8


@dataclass(frozen=True)
class FrameWindow:
    frames: Tuple[int, ...]     # frame indices, in the order the UNet sees them
    weights: Tuple[float, ...]  # fuse weight of each of those frames (normalised over all windows)


@dataclass(frozen=True)
class WindowSettings:
    context_length: int = DEFAULT_CONTEXT_LENGTH
    context_overlap: int = DEFAULT_CONTEXT_OVERLAP
    context_stride: int = 1
    closed_loop: bool = False
    fuse_method: str = "pyramid"

    def __post_init__(self):
        validate_settings(self.context_length, self.context_overlap, self.context_stride, self.fuse_method)

    def windows(self, num_frames: int) -> Tuple[FrameWindow, ...]:
        return frame_windows(num_frames, self.context_length, self.context_overlap, self.context_stride,
                             self.closed_loop, self.fuse_method)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_settings(context_length: int, context_overlap: int, context_stride: int, fuse_method: str) -> None:
    if not _is_int(context_length) or context_length < 1:
        raise ValueError(f"context_length must be a positive integer (frames per window), got {context_length!r}")
    if not _is_int(context_overlap) or context_overlap < 0:
        raise ValueError(f"context_overlap must be an integer >= 0, got {context_overlap!r}")
    if context_overlap >= context_length:
        raise ValueError(f"context_overlap ({context_overlap}) must be smaller than context_length "
                         f"({context_length}); windows would never advance. Use at most {context_length - 1}.")
    if not _is_int(context_stride) or context_stride < 1:
        raise ValueError(f"context_stride must be an integer >= 1 (1 = contiguous windows only), got "
                         f"{context_stride!r}")
    if fuse_method not in FUSE_METHODS:
        raise ValueError(f"fuse_method must be one of {list(FUSE_METHODS)}, got {fuse_method!r}")


def window_count(count: int, length: int, overlap: int, closed: bool) -> int:
    """How many windows ``window_starts`` spreads over ``count`` positions (``count > length``)."""
    step = length - overlap
    return -(-count // step) if closed else -(-(count - overlap) // step)


def window_starts(count: int, length: int, overlap: int, closed: bool) -> List[int]:
    """Starts of the fewest evenly spread windows of ``length`` over ``count`` positions that overlap by at least
    ``overlap`` (``count > length``). Open: the first starts at 0 and the last ends at ``count``. Closed: windows
    wrap, and the last one overlaps the first across the seam."""
    n = window_count(count, length, overlap, closed)
    if closed:
        return [round(i * count / n) for i in range(n)]
    return [round(i * (count - length) / (n - 1)) for i in range(n)]


def neighbour_overlaps(starts: Sequence[int], count: int, length: int, closed: bool) -> List[Tuple[int, int]]:
    """(frames shared with the previous window, with the next window) for windows at ``starts``."""
    n = len(starts)
    out = []
    for i, start in enumerate(starts):
        if closed:
            prev_end = starts[i - 1] + length - (count if i == 0 else 0)
            next_start = starts[i + 1] if i + 1 < n else starts[0] + count
        else:
            prev_end = starts[i - 1] + length if i > 0 else start
            next_start = starts[i + 1] if i + 1 < n else start + length
        out.append((max(prev_end - start, 0), max(start + length - next_start, 0)))
    return out


def raw_weights(length: int, fuse_method: str, overlap_before: int = 0, overlap_after: int = 0) -> List[float]:
    """Unnormalised weights over one window's positions.

    flat: all one. pyramid: grows by one per frame from each edge (1, 2, ..., 2, 1). overlap-linear: one, except
    linear ramps (strictly positive) across the frames shared with the previous / next window."""
    if fuse_method == "flat":
        return [1.0] * length
    if fuse_method == "pyramid":
        return [float(min(j + 1, length - j)) for j in range(length)]
    weights = []
    for j in range(length):
        up = (j + 1) / (overlap_before + 1) if j < overlap_before else 1.0
        down = (length - j) / (overlap_after + 1) if j >= length - overlap_after else 1.0
        weights.append(min(up, down))
    return weights


def _level_windows(sequence: Sequence[int], length: int, overlap: int, closed: bool, fuse_method: str):
    """(frames, unnormalised weights) of the windows over one sequence of frame indices."""
    count = len(sequence)
    if count <= length:
        return [(tuple(sequence), raw_weights(count, fuse_method))]
    starts = window_starts(count, length, overlap, closed)
    out = []
    for start, (before, after) in zip(starts, neighbour_overlaps(starts, count, length, closed)):
        frames = tuple(sequence[(start + j) % count] for j in range(length))
        out.append((frames, raw_weights(length, fuse_method, before, after)))
    return out


def stride_levels(num_frames: int, context_length: int, context_stride: int) -> List[int]:
    """Frame steps of the window levels: 1, then 2, 4, ... while every subsequence holds a full window."""
    levels = [1]
    for power in range(1, context_stride):
        step = 1 << power
        if step * context_length > num_frames:
            break
        levels.append(step)
    return levels


def window_lengths(num_frames: int, context_length: int = DEFAULT_CONTEXT_LENGTH,
                   context_overlap: int = DEFAULT_CONTEXT_OVERLAP, context_stride: int = 1,
                   closed_loop: bool = False) -> Dict[int, int]:
    """{window length: number of windows} of ``frame_windows`` with these settings, lengths in the order they first
    occur there, counted without building the windows (a memory estimate of 4096 frames in windows of one frame
    must not make 32k window objects)."""
    if not _is_int(num_frames) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    validate_settings(context_length, context_overlap, context_stride, "flat")
    if context_length >= num_frames:
        return {num_frames: 1}
    counts: Dict[int, int] = {}
    for step in stride_levels(num_frames, context_length, context_stride):
        for offset in range(step):
            count = len(range(offset, num_frames, step))
            closed = closed_loop and num_frames % step == 0
            length, windows = (count, 1) if count <= context_length else (
                context_length, window_count(count, context_length, context_overlap, closed))
            counts[length] = counts.get(length, 0) + windows
    return counts


@lru_cache(maxsize=256)
def frame_windows(num_frames: int, context_length: int = DEFAULT_CONTEXT_LENGTH,
                  context_overlap: int = DEFAULT_CONTEXT_OVERLAP, context_stride: int = 1, closed_loop: bool = False,
                  fuse_method: str = "pyramid") -> Tuple[FrameWindow, ...]:
    """All windows for a video of ``num_frames`` frames, contiguous level first, with normalised weights."""
    if not _is_int(num_frames) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    validate_settings(context_length, context_overlap, context_stride, fuse_method)
    if context_length >= num_frames:
        return (FrameWindow(tuple(range(num_frames)), (1.0,) * num_frames),)
    raw = []
    for step in stride_levels(num_frames, context_length, context_stride):
        for offset in range(step):
            sequence = list(range(offset, num_frames, step))
            # a strided subsequence loops cleanly only when the step divides the video
            closed = closed_loop and num_frames % step == 0
            raw.extend(_level_windows(sequence, context_length, context_overlap, closed, fuse_method))
    totals = [0.0] * num_frames
    for frames, weights in raw:
        for frame, weight in zip(frames, weights):
            totals[frame] += weight
    missing = [f for f, total in enumerate(totals) if total <= 0]
    if missing:  # cannot happen with the layouts above; a guard against silent black frames
        raise AssertionError(f"frames {missing[:8]} are in no window (num_frames={num_frames})")
    return tuple(FrameWindow(frames, tuple(w / totals[f] for f, w in zip(frames, weights)))
                 for frames, weights in raw)
