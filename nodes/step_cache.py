"""``UNet3DStepCache``: fewer full UNet evaluations per video by reusing deep features between sampler steps.

Glue only: the cached evaluation is ``unet3d.network.step_cache`` (the model runs its shallow path and reuses the
deep features of the last full evaluation), and so is the plan of which call does what. The node clones the MODEL and
puts a fresh ``StepCache`` under ``transformer_options["unet3d"]["step_cache"]``; ``nodes.patch_protocol`` asks it
for a plan on every model call from the sampler's noise level. Nothing is written into the shared module: the input
MODEL and every other branch of the graph sample as before.

The start/end percents become a noise window with the model's ``percent_to_sigma``, as core nodes do. Frame batching
calls the model once per window and cond batch: each of those call sites keeps its own features (see
``unet3d.network.step_cache``).
"""
from __future__ import annotations

from ..unet3d.errors import SettingError
from ..unet3d.network.step_cache import (
    MAX_INTERVAL,
    StepCache,
    validate_depth,
    validate_interval,
    validate_reuse_temporal_in,
)
from .patches import CATEGORY, MODEL_TIP, _clone_with_option, _unet

MAX_DEPTH_WIDGET = 8


def model_sampling(model):
    """The patcher's sampling object (``get_model_object`` from ComfyUI 0.3 on; the base model's before)."""
    getter = getattr(model, "get_model_object", None)
    if getter is not None:
        return getter("model_sampling")
    return model.model.model_sampling


def check_percents(start_percent: float, end_percent: float) -> None:
    for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise SettingError(f"UNet3D Step Cache: {name} must be a number from 0.0 to 1.0, got {value!r}")
    if start_percent > end_percent:
        raise SettingError(f"UNet3D Step Cache: start_percent ({start_percent}) is after end_percent ({end_percent}); "
                         f"the cache works between the two, so start must not exceed end")


class UNet3DStepCache:
    DESCRIPTION = ("Faster sampling: runs the whole UNet only every `interval` steps and, in between, only its "
                   "outermost layers, reusing the deeper features of the last full step (DeepCache). Interval 3 "
                   "takes about 0.4x the time per video (Zeroscope, depth 1), with a small change of the result; "
                   "interval 1 is off (exactly the plain model). Works with frame batching, FreeU, attention "
                   "slicing and chunking. Returns a patched copy; the input model is unchanged.")
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the step cache on while sampling.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": MODEL_TIP}),
            "interval": ("INT", {
                "default": 3, "min": 1, "max": MAX_INTERVAL,
                "tooltip": "Full UNet every this many steps, cached steps in between. 1 = off. 2-3 keep the result "
                           "close; 5 and more are faster and drift further."}),
            "start_percent": ("FLOAT", {
                "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "Where in the sampling (0 = first step, 1 = end) the cache starts; earlier steps run "
                           "in full. The first step inside the window is always full."}),
            "end_percent": ("FLOAT", {
                "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "Where the cache stops; later steps run in full (and no features are kept)."}),
        }, "optional": {
            "depth": ("INT", {
                "default": 1, "min": 0, "max": MAX_DEPTH_WIDGET,
                "tooltip": "Layers of the last decoder block that run on cached steps (with the encoder layers "
                           "whose skips they use). 0 = all of them (closest to the full model); 1 = only the last "
                           "(fastest, furthest)."}),
            "reuse_temporal_in": ("BOOLEAN", {
                "default": False,
                "tooltip": "Cached steps also skip the first frame-mixing layer (transformer_in) and add what it "
                           "added on the last full step. Little gain on Zeroscope/ModelScope (a few % of a step); "
                           "large on models whose first block is narrow, where that layer is most of a cached "
                           "step. Less exact: the result drifts further."}),
        }}

    def patch(self, model, interval=3, start_percent=0.0, end_percent=1.0, depth=1, reuse_temporal_in=False):
        _unet(model)
        interval, depth = validate_interval(int(interval)), validate_depth(int(depth))
        check_percents(start_percent, end_percent)
        sampling = model_sampling(model)
        cache = StepCache(interval, depth, level_start=float(sampling.percent_to_sigma(start_percent)),
                          level_end=float(sampling.percent_to_sigma(end_percent)),
                          reuse_temporal_in=validate_reuse_temporal_in(reuse_temporal_in))
        return (_clone_with_option(model, "step_cache", cache),)
