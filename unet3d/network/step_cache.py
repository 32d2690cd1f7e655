"""Step cache: reuse the deep features of the last full UNet evaluation on the next sampler steps (DeepCache).

Neighbouring sampler steps change the deep, low-resolution features of a UNet far less than the shallow ones, so
between two full evaluations a "cached" evaluation runs only the shallow path and takes the rest from the last full
one:

    full:    conv_in, transformer_in, every down block, mid block, every up block, head; keeps the input ``h`` of
             layer ``L - depth`` of the last up block (L = its layer count)
    cached:  conv_in, transformer_in, the first ``depth - 1`` layers of the first down block (the skips those last
             ``depth`` up layers concatenate), then the last ``depth`` layers of the last up block on the kept ``h``,
             and the head

``depth`` ranges from 1 (only ``transformer_in``'s skip is fresh: cheapest, least exact) to L (the whole first down
block and last up block run: the prototype measured in the README). Nothing else changes: with no plan, or a plan that
does not reuse, the forward is the plain one, bit for bit.

``reuse_temporal_in`` also keeps what ``transformer_in`` added to its input on the last full evaluation, and a cached
one adds that to its fresh ``conv_in`` output instead of running ``transformer_in``. That layer
mixes frames at full resolution and is 8 heads x 64 wide whatever the first block's width, so where that block is
narrow it is most of a cached evaluation (about 35 % of a full one on the benchmarks' medium config, against 3 % on
Zeroscope's). What it adds follows the input, so this is less exact than reusing deep features alone: the graph
benchmark prints both.

Two objects, both host-free:

- :class:`StepCachePlan` is the per-call option (``call_options={"step_cache": plan}``): reuse or not, store or not,
  and the :class:`FeatureSlot` that carries the features of one call site from one step to the next.
- :class:`StepCache` makes those plans for one sampling run from the noise level of each call: a full evaluation
  every ``interval`` steps inside a noise window, cached ones in between. It counts steps by noise level (a new level
  is a new step; a level above the last one starts a new run and drops everything) and keys its slots by the call's
  place within its step and a caller's key (e.g. which cond chunks the call holds), so the windows of frame batching
  and separately batched cond/uncond calls each keep their own features and never mix. A slot whose features do not
  fit the call (other rows or size) is not reused: that call runs in full.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Hashable, Optional, Tuple

import torch

MAX_INTERVAL = 1000
MAX_DEPTH = 64


class FeatureSlot:
    """The deep features one call site keeps between steps (``None`` when empty)."""

    __slots__ = ("features", "temporal_in")

    def __init__(self):
        self.features: Optional[torch.Tensor] = None
        self.temporal_in: Optional[torch.Tensor] = None   # transformer_in's delta, with ``reuse_temporal_in``

    def fits(self, like: torch.Tensor, rows: int, height: int, width: int) -> bool:
        """Whether the kept features belong to a call of ``rows`` rows at ``height`` x ``width`` latent pixels on
        ``like``'s device and dtype."""
        f = self.features
        return (f is not None and f.shape[0] == rows and tuple(f.shape[-2:]) == (height, width)
                and f.device == like.device and f.dtype == like.dtype)

    def temporal_in_fits(self, like: torch.Tensor, frames: int) -> bool:
        """Whether a kept ``transformer_in`` delta ``(B, F, C, H, W)`` belongs to ``like``, a ``conv_in`` output
        ``(B*F, C, H, W)`` of clips of ``frames`` frames."""
        r = self.temporal_in
        return (r is not None and r.shape[1] == frames and r.shape[0] * frames == like.shape[0]
                and tuple(r.shape[2:]) == tuple(like.shape[1:]) and r.device == like.device and r.dtype == like.dtype)


def fresh_layers(plan: "StepCachePlan", layer_count: int) -> int:
    """How many of the last up block's ``layer_count`` layers run on a cached call."""
    return layer_count if plan.depth == 0 else min(plan.depth, layer_count)


@dataclass(frozen=True)
class StepCachePlan:
    """What one forward call does: ``reuse`` the slot's features (a cached evaluation; a call they do not fit runs
    in full), and whether the slot ``keep``s features after the call (a full call stores its own, a cached call leaves
    the slot as it was); with ``keep=False`` the slot is emptied. ``reuse_temporal_in``: full calls also keep
    ``transformer_in``'s delta and cached calls add it instead of running that layer."""
    slot: FeatureSlot = field(default_factory=FeatureSlot)
    reuse: bool = False
    keep: bool = True
    depth: int = 0          # fresh layers of the last up block on a cached call; 0 = all of them
    reuse_temporal_in: bool = False

    def __post_init__(self):
        if not isinstance(self.slot, FeatureSlot):
            raise ValueError(f"step cache plan: slot must be a FeatureSlot, got {type(self.slot).__name__}")
        validate_depth(self.depth)
        validate_reuse_temporal_in(self.reuse_temporal_in)


def validate_depth(depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= MAX_DEPTH:
        raise ValueError(f"step cache depth must be a whole number from 0 (the whole last up block) to {MAX_DEPTH}, "
                         f"got {depth!r}")
    return depth


def validate_reuse_temporal_in(flag) -> bool:
    if not isinstance(flag, bool):
        raise ValueError(f"step cache reuse_temporal_in must be True or False, got {flag!r}")
    return flag


def validate_interval(interval) -> int:
    if isinstance(interval, bool) or not isinstance(interval, int) or not 1 <= interval <= MAX_INTERVAL:
        raise ValueError(f"step cache interval must be a whole number from 1 (every step in full: off) to "
                         f"{MAX_INTERVAL}, got {interval!r}")
    return interval


class StepCache:
    """Plans for one sampling run: a full evaluation every ``interval`` steps while the noise level is within
    ``[level_end, level_start]`` (levels fall as sampling goes on), cached evaluations in between.

    ``plan(level, key)`` once per model call, with the call's noise level (a sigma or a timestep: any scale that falls
    step by step) and a hashable ``key`` for what the call holds (e.g. its cond chunks). Callers that know the
    schedule say so: ``first`` (the run's first level: everything kept is dropped) and ``last`` (its last level:
    nothing is kept after the call). Outside the window every call is plain and nothing is kept, so features never
    outlive the window; without ``last`` they live until the next call of this object.
    """

    def __init__(self, interval: int, depth: int = 0, level_start: float = float("inf"), level_end: float = 0.0,
                 reuse_temporal_in: bool = False):
        self.interval = validate_interval(interval)
        self.depth = validate_depth(depth)
        self.level_start, self.level_end = float(level_start), float(level_end)
        self.reuse_temporal_in = validate_reuse_temporal_in(reuse_temporal_in)
        self.reset()

    def reset(self) -> None:
        """Forget every kept feature and the step count (a new run)."""
        self._slots: Dict[Tuple[int, Hashable], FeatureSlot] = {}
        self._level: Optional[float] = None
        self._step = -1          # steps seen inside the window in this run
        self._call = 0           # calls seen at the current level

    def __deepcopy__(self, memo):
        """Hosts deep-copy model options when they clone a model: the copy starts empty (features are not copied)."""
        return StepCache(self.interval, self.depth, self.level_start, self.level_end, self.reuse_temporal_in)

    @property
    def kept(self) -> int:
        """How many call sites hold features now."""
        return sum(slot.features is not None for slot in self._slots.values())

    def in_window(self, level: float) -> bool:
        return self.level_end <= level <= self.level_start

    def plan(self, level: float, key: Hashable = None, first: bool = False,
             last: bool = False) -> Optional[StepCachePlan]:
        """The plan for one call; ``None`` for a plain call."""
        level = float(level)
        if first and level != self._level or (self._level is not None and level > self._level):
            self.reset()                                   # a new run
        if level != self._level:
            self._level, self._call = level, 0
            self._step += self.in_window(level)
        else:
            self._call += 1
        if self.interval == 1 or not self.in_window(level):
            self._slots.clear()
            return None
        slot = self._slots.setdefault((self._call, key), FeatureSlot())
        return StepCachePlan(slot, reuse=self._step % self.interval != 0, keep=not last, depth=self.depth,
                             reuse_temporal_in=self.reuse_temporal_in)
