"""The plugin's ComfyUI-side modules without a ComfyUI host, for tests and benchmarks.

``plugin_module("nodes.frame_batching")`` imports a host-free module of ``nodes/`` under a throw-away package name, so
``nodes/__init__.py`` (which imports comfy) never runs. ``sampler_call`` makes one model evaluation the way ComfyUI's
sampler does: ``model_function_wrapper(apply_model, args)`` when a wrapper is given, else ``apply_model(x, t, **c)``,
with ``apply_model`` calling the UNet as ``BaseModel.apply_model`` does (without its sigma scaling, which acts per
row and does not change what the wrapper or the UNet see).
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Callable, List, Optional

from .host import REPO_ROOT

PACKAGE = "_unet3d_plugin"


def plugin_module(dotted: str):
    """``plugin_module("nodes.unet_adapter")`` -> that module of this checkout."""
    if PACKAGE not in sys.modules:
        for name, path in ((PACKAGE, REPO_ROOT), (f"{PACKAGE}.nodes", REPO_ROOT / "nodes")):
            module = types.ModuleType(name)
            module.__path__ = [str(path)]
            sys.modules[name] = module
    return importlib.import_module(f"{PACKAGE}.{dotted}")


def sampler_call(unet, x, t, context, chunks: int = 2, frames_per_video: Optional[int] = None,
                 wrapper: Optional[Callable] = None, transformer_options: Optional[dict] = None,
                 seen: Optional[List[tuple]] = None):
    """One model evaluation of ``unet`` (a ComfyUNet3D) on the sampler's stacked rows ``x`` (chunks x frames)."""
    cond_or_uncond = [1, 0][:chunks] if chunks <= 2 else list(range(chunks))
    options = {**(transformer_options or {}), "cond_or_uncond": cond_or_uncond}
    c = {"c_crossattn": context, "transformer_options": options}
    if frames_per_video:
        c["num_video_frames"] = frames_per_video

    def apply_model(x, t, c_crossattn=None, transformer_options=None, num_video_frames=None, **_):
        if seen is not None:
            seen.append((x, t, c_crossattn))
        return unet(x, t, c_crossattn, transformer_options=transformer_options, num_video_frames=num_video_frames)
    if wrapper is None:
        return apply_model(x, t, **c)
    return wrapper(apply_model, {"input": x, "timestep": t, "c": c, "cond_or_uncond": cond_or_uncond})
