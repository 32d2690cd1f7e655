"""Keyframed prompts for one video ("prompt travel"): the schedule's grammar, which prompts each frame blends, and the
per-frame text embeddings.

A schedule is a list of keyframes ``FRAME: prompt``, one per line or separated by a comma before the next
``FRAME:``::

    0: a calm sea at dawn
    48: a storm at sea, lightning

    0: a calm sea, 48: a storm at sea          (the same on one line)

Frame numbers count from 0 and must increase; the FizzNodes form (``"0": "a calm sea",``) parses too. A colon
followed by a digit is text (``16:9`` is not a keyframe). Frames before the first keyframe take its prompt, frames
after the last take the last one. Between two keyframes, ``linear`` blends the two embeddings by the frame's position
(frame 24 of ``0 .. 48`` is half of each), ``hold`` keeps the earlier prompt until the next keyframe.

Prompts can encode to different token counts (the host's tokenizer cuts long prompts into 77-token chunks). They
are brought to one count by repeating each embedding along the tokens to the least common multiple, which leaves
cross-attention unchanged (every key appears equally often), bounded by ``MAX_TOKEN_GROWTH`` times the longest.
"""
from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from ..errors import PromptScheduleError

INTERPOLATIONS = ("linear", "hold")
MAX_SCHEDULE_CHARS = 1 << 16
MAX_FRAMES = 4096
MAX_TOKEN_GROWTH = 4
EXAMPLE = "'0: a calm sea' and '48: a storm at sea', one per line"

# a keyframe marker: start of text, a newline or a comma, then FRAME (optionally quoted) and a colon not followed
# by a digit
_MARKER = re.compile(r'(?:\A|[,\n])[ \t\r]*"?(\d+)"?[ \t]*:(?!\d)')


@dataclass(frozen=True)
class Keyframe:
    frame: int
    text: str


@dataclass(frozen=True)
class FrameBlend:
    """One frame's embedding: ``(1 - weight) * keyframes[first] + weight * keyframes[second]``."""
    first: int
    second: int
    weight: float


def _quote(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _prompt_text(raw: str) -> str:
    text = raw.strip()
    if text.endswith(","):
        text = text[:-1].rstrip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


def check_frames(num_frames) -> int:
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or not 1 <= num_frames <= MAX_FRAMES:
        raise PromptScheduleError(f"prompt schedule: frames must be an integer from 1 to {MAX_FRAMES}, got "
                                  f"{num_frames!r}")
    return num_frames


def parse_schedule(text: str, num_frames: int) -> Tuple[Keyframe, ...]:
    """The keyframes of ``text`` for a video of ``num_frames`` frames, checked: in range, increasing, not empty."""
    check_frames(num_frames)
    if not isinstance(text, str):
        raise PromptScheduleError(f"prompt schedule must be text, got {type(text).__name__}")
    if len(text) > MAX_SCHEDULE_CHARS:
        raise PromptScheduleError(f"prompt schedule is {len(text)} characters long; at most {MAX_SCHEDULE_CHARS} "
                                  f"are read. Use fewer or shorter keyframes.")
    markers = list(_MARKER.finditer(text))
    if not markers:
        raise PromptScheduleError(f"prompt schedule {_quote(text.strip())} has no keyframe. Write each prompt "
                                  f"after its frame number, e.g. {EXAMPLE}.")
    lead = _prompt_text(text[:markers[0].start()])
    if lead:
        raise PromptScheduleError(f"prompt schedule: text {_quote(lead)} comes before the first keyframe. Put a "
                                  f"frame number before it (e.g. '0: {lead[:30]}') or remove it.")
    keyframes = []
    for i, marker in enumerate(markers):
        end = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        digits, prompt = marker.group(1), _prompt_text(text[marker.end():end])
        if len(digits) > 9 or int(digits) >= num_frames:       # (a long digit string is never converted)
            raise PromptScheduleError(
                f"prompt schedule: keyframe {digits[:12]}{'...' if len(digits) > 12 else ''} ({_quote(prompt)}) is "
                f"beyond the video, whose frames are 0 to {num_frames - 1}. Move the keyframe to a frame below "
                f"{num_frames} or raise frames.")
        frame = int(digits)
        if not prompt:
            raise PromptScheduleError(f"prompt schedule: keyframe {frame} has no prompt text. Write the prompt "
                                      f"after '{frame}:' or remove the keyframe.")
        if keyframes and frame <= keyframes[-1].frame:
            before = keyframes[-1]
            what = "a second keyframe for that frame" if frame == before.frame else "out of order"
            raise PromptScheduleError(
                f"prompt schedule: keyframe {frame} ({_quote(prompt)}) follows keyframe {before.frame} "
                f"({_quote(before.text)}): {what}. List keyframes in increasing frame order, one per frame.")
        keyframes.append(Keyframe(frame, prompt))
    return tuple(keyframes)


def frame_blends(keyframes: Sequence[Keyframe], num_frames: int, interpolation: str = "linear"
                 ) -> Tuple[FrameBlend, ...]:
    """Which keyframes each of the ``num_frames`` frames blends, and how."""
    check_frames(num_frames)
    if interpolation not in INTERPOLATIONS:
        raise PromptScheduleError(f"prompt schedule: interpolation must be one of {list(INTERPOLATIONS)}, got "
                                  f"{interpolation!r}")
    if not keyframes:
        raise PromptScheduleError("prompt schedule: no keyframes")
    frames = [k.frame for k in keyframes]
    out = []
    for f in range(num_frames):
        i = max(bisect.bisect_right(frames, f) - 1, 0)          # the last keyframe at or before f (or the first)
        if f <= frames[i] or i + 1 == len(frames) or interpolation == "hold":
            out.append(FrameBlend(i, i, 0.0))
        else:
            out.append(FrameBlend(i, i + 1, (f - frames[i]) / (frames[i + 1] - frames[i])))
    return tuple(out)


def common_token_count(counts: Sequence[int], names: Optional[Sequence[str]] = None) -> int:
    """The token count every embedding is repeated to: the least common multiple, at most ``MAX_TOKEN_GROWTH`` times
    the longest."""
    common = math.lcm(*counts)
    if common > MAX_TOKEN_GROWTH * max(counts):
        listed = ", ".join(f"{n}: {c} tokens" for n, c in zip(names or [str(i) for i in range(len(counts))], counts))
        raise PromptScheduleError(
            f"prompt schedule: the keyframe prompts encode to token counts ({listed}) whose common multiple is "
            f"{common} tokens, more than {MAX_TOKEN_GROWTH}x the longest. Shorten the long prompts so that they "
            f"use the same number of 75-token chunks (or one chunk each).")
    return common


def blend_rows(embeddings: Sequence[torch.Tensor], blends: Sequence[FrameBlend]) -> torch.Tensor:
    """Per-frame rows from one row per keyframe. ``embeddings``: tensors ``(1, tokens_i, dim)`` (or ``(1, dim)``);
    returns ``(frames, tokens, dim)`` (or ``(frames, dim)``) in the embeddings' dtype, blended in float32. A frame
    with weight 0 equals its keyframe's row exactly."""
    if embeddings[0].ndim == 3:
        tokens = common_token_count([e.shape[1] for e in embeddings])
        embeddings = [e.repeat(1, tokens // e.shape[1], 1) for e in embeddings]
    table = torch.cat(list(embeddings), dim=0)
    first = torch.tensor([b.first for b in blends], device=table.device)
    second = torch.tensor([b.second for b in blends], device=table.device)
    weight = torch.tensor([b.weight for b in blends], dtype=torch.float32, device=table.device)
    weight = weight.reshape(-1, *([1] * (table.ndim - 1)))
    rows = table.float()
    return (rows[first] * (1 - weight) + rows[second] * weight).to(table.dtype)
