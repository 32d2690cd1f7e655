"""Frames in the batch and back: the one fold/unfold of video latents between the host's rows and the model's videos.

The folded layout ("frames as batch", as image-model hosts carry video latents):
``rows = chunks * videos_per_chunk * frames``, video ``v`` frame ``f`` at row ``v * frames + f``; cond chunk ``c``
holds videos ``c*V .. c*V + V - 1``. The model takes ``(videos, channels, frames, height, width)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class FrameLayout:
    chunks: int               # cond chunks batched together (e.g. cond and uncond)
    videos_per_chunk: int
    frames: int               # frames per video

    @property
    def videos(self) -> int:
        return self.chunks * self.videos_per_chunk

    @property
    def rows(self) -> int:
        return self.videos * self.frames


def frame_layout(rows: int, chunks: int, frames_per_video: Optional[int] = None) -> FrameLayout:
    """Layout of ``rows`` batch rows in ``chunks`` cond chunks. ``frames_per_video`` splits a chunk into several
    videos; a count that does not divide a chunk is ignored (one video per chunk)."""
    chunks = max(int(chunks), 1)
    if rows % chunks:
        raise ValueError(f"{rows} latent rows cannot be split into {chunks} cond chunks; rows must split evenly "
                         f"(one chunk per cond/uncond entry)")
    per_chunk = rows // chunks
    frames = int(frames_per_video) if frames_per_video else per_chunk
    if frames < 1 or per_chunk % frames:
        frames = per_chunk
    return FrameLayout(chunks, per_chunk // frames, frames)


def fold(x: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
    """``(rows, C, h, w)`` -> ``(videos, C, frames, h, w)`` (a view where possible)."""
    return x.reshape(layout.videos, layout.frames, *x.shape[1:]).transpose(1, 2)


def unfold(sample: torch.Tensor) -> torch.Tensor:
    """``(videos, C, frames, h, w)`` -> ``(videos*frames, C, h, w)``, the inverse of ``fold``."""
    v, c, f = sample.shape[:3]
    return sample.transpose(1, 2).reshape(v * f, c, *sample.shape[3:])


def per_video(values: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
    """A per-row tensor (e.g. timesteps, one per frame) -> one value per video (its first frame's); other shapes are
    returned unchanged."""
    if torch.is_tensor(values) and values.ndim >= 1 and values.shape[0] == layout.rows:
        return values.reshape(layout.videos, layout.frames, *values.shape[1:])[:, 0]
    return values
