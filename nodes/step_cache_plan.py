"""The step cache's plan for one sampler call, from what ComfyUI puts in ``transformer_options``."""
from __future__ import annotations

from typing import Any, Mapping


def step_cache_plan(cache, transformer_options: Mapping[str, Any]):
    """The ``StepCache`` plan of one sampler call: its noise level (``sigmas``), whether it is the run's first or last
    level (``sample_sigmas``, the run's schedule, from ComfyUI 0.3 on), and its cond chunks as the key. A call from
    outside a sampler (no ``sigmas``) runs plain."""
    sigmas = transformer_options.get("sigmas")
    if sigmas is None:
        return None
    level = float(sigmas.max()) if hasattr(sigmas, "max") else float(sigmas)
    schedule = transformer_options.get("sample_sigmas")
    levels = [float(s) for s in schedule.tolist()] if schedule is not None and len(schedule) > 1 else []
    positive = [s for s in levels if s > 0]
    first = bool(levels) and level >= levels[0]
    last = bool(positive) and level <= positive[-1]
    return cache.plan(level, tuple(transformer_options.get("cond_or_uncond") or ()), first, last)
