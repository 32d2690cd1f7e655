"""ComfyUI's patch protocol, translated into unet3d's neutral per-call options and hooks (the only place it is read).

ComfyUI hands every model call a ``transformer_options`` dict: the patch lists set by patch nodes
(``patches["input_block_patch"]``, ``["input_block_patch_after_skip"]``, ``["output_block_patch"]``), the sampler's
bookkeeping (``cond_or_uncond``, ``sigmas``...) and this pack's own settings under ``transformer_options["unet3d"]``
(written by the patch nodes in ``nodes/patches.py``). ``call_options`` turns that into ``unet3d.network.options``'s
``CallOptions``.

Block numbering: ComfyUI's SD UNet calls ``("input", i)`` / ``("output", i)`` for its ``input_blocks`` /
``output_blocks``; UNet3D's skip and concatenation indices follow the original ModelScope checkpoint's
``input_blocks`` / ``output_blocks``, which number the same way, so a core patch that keys on a block index addresses
the same depth as on an SD1.5 UNet. Imports nothing from ComfyUI (tested without a host).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from ..unet3d.network.hooks import NO_HOOKS, UNetHooks
from ..unet3d.network.options import CallOptions, parse_call_options

OUR_KEY = "unet3d"                  # this pack's settings inside transformer_options
OUR_SETTINGS = ("attention_slice", "ff_chunk", "freeu", "step_cache")


class ComfyPatchHooks(UNetHooks):
    """ComfyUI's input / output block patches at UNet3D's skips and concatenations. Each patch gets the call's
    ``transformer_options`` with ``block`` set, as ComfyUI's own UNet passes them (a copy: the caller's dict is never
    written)."""

    def __init__(self, patches: Mapping[str, list], transformer_options: dict):
        self.input = list(patches.get("input_block_patch") or [])
        self.after_skip = list(patches.get("input_block_patch_after_skip") or [])
        self.output = list(patches.get("output_block_patch") or [])
        self.options = dict(transformer_options)

    def encoder_skip(self, h, index):
        if self.input or self.after_skip:
            self.options["block"] = ("input", index)
        for patch in self.input:
            h = patch(h, self.options)
        skip = h
        for patch in self.after_skip:
            h = patch(h, self.options)
        return skip, h

    def decoder_concat(self, h, skip, index):
        if self.output:
            self.options["block"] = ("output", index)
        for patch in self.output:
            h, skip = patch(h, skip, self.options)
        return h, skip


def hooks_for(transformer_options: Mapping[str, Any]) -> UNetHooks:
    patches = transformer_options.get("patches") or {}
    if not any(patches.get(k) for k in ("input_block_patch", "input_block_patch_after_skip", "output_block_patch")):
        return NO_HOOKS
    return ComfyPatchHooks(patches, dict(transformer_options))


def call_options(transformer_options: Optional[Mapping[str, Any]],
                 default_attention: Optional[Callable] = None) -> CallOptions:
    """The unet3d per-call options for one ComfyUI model call."""
    transformer_options = transformer_options or {}
    ours = transformer_options.get(OUR_KEY) or {}
    unknown = sorted(set(ours) - set(OUR_SETTINGS))
    if unknown:
        raise ValueError(f"transformer_options[{OUR_KEY!r}] has unknown keys {unknown}; valid: "
                         f"{', '.join(OUR_SETTINGS)}")
    settings = {key: ours[key] for key in OUR_SETTINGS if key in ours}
    if settings.get("step_cache") is not None:
        settings["step_cache"] = step_cache_plan(settings["step_cache"], transformer_options)
    return parse_call_options({**settings, "attention_fn": default_attention,
                               "hooks": hooks_for(transformer_options)})


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
