"""FreeNoise noise rescheduling for videos sampled in frame windows (Qiu et al., "FreeNoise: Tuning-Free Longer Video
Diffusion via Noise Rescheduling", arXiv 2310.15169).

Windows of independent noise drift apart in content. FreeNoise keeps the noise of the first ``context_length`` frames
and fills every following stretch of ``stride = context_length - context_overlap`` frames with a shuffled copy of the
stretch one window earlier, so every window sees (a permutation of) the same base noise, reordered locally. The copy
is made stretch by stretch, so a frame can take noise that was itself copied (frame 2L + k traces back to a frame in
the first window). The last stretch may be shorter than ``stride``: it shuffles that many frames from the start of
the stretch one window earlier. Each shuffle is ``torch.randperm`` on a CPU generator seeded with ``seed``, one draw
per stretch in frame order, so a seed gives the same noise on every machine.

A video that one window covers (``num_frames <= context_length``) keeps its noise unchanged.
"""
from __future__ import annotations

from typing import Tuple

import torch

MAX_SEED = (1 << 64) - 1


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def freenoise_sources(num_frames: int, context_length: int, context_overlap: int, seed: int = 0) -> Tuple[int, ...]:
    """For each frame of one video, the frame whose noise it takes (all sources lie in the first window)."""
    for name, value, low in (("num_frames", num_frames, 1), ("context_length", context_length, 1),
                             ("context_overlap", context_overlap, 0), ("seed", seed, 0)):
        if not _is_int(value) or value < low:
            raise ValueError(f"FreeNoise: {name} must be an integer >= {low}, got {value!r}")
    if context_overlap >= context_length:
        raise ValueError(f"FreeNoise: context_overlap ({context_overlap}) must be smaller than context_length "
                         f"({context_length})")
    if seed > MAX_SEED:
        raise ValueError(f"FreeNoise: seed must be below 2**64, got {seed}")
    sources = list(range(num_frames))
    stride = context_length - context_overlap
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for start in range(0, num_frames - context_length, stride):
        target = start + context_length
        count = min(stride, num_frames - target)
        order = torch.randperm(count, generator=generator).tolist()
        for offset, pick in enumerate(order):
            sources[target + offset] = sources[start + pick]   # start + pick < target: already final
    return tuple(sources)


def reschedule_noise(noise: torch.Tensor, sources: Tuple[int, ...], dim: int = 0) -> torch.Tensor:
    """``noise`` with its frames along ``dim`` replaced by their sources (a new tensor; the input is unchanged)."""
    if noise.shape[dim] != len(sources):
        raise ValueError(f"FreeNoise: noise has {noise.shape[dim]} frames along dim {dim}, the schedule "
                         f"{len(sources)}")
    return noise.index_select(dim, torch.tensor(sources, dtype=torch.long, device=noise.device))
