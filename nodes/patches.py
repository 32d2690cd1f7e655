"""Patch nodes: FreeU (diffusers-exact), attention slicing and feed-forward chunking for UNet3D models.

Each node clones the ModelPatcher and writes plain data into the clone's ``model_options["transformer_options"]``
under the ``unet3d`` key, which ``nodes.patch_protocol`` turns into unet3d's per-call options on every forward call.
Nothing is written into the shared torch module, so the input MODEL and every other branch of the graph stay as they
were.
"""
from __future__ import annotations

import logging
import math

from ..unet3d.errors import SettingError
from ..unet3d.network.options import validate_chunking, validate_slice_value
from .patch_protocol import OUR_KEY

log = logging.getLogger("unet3d")

CATEGORY = "video/unet3d"
MODEL_TIP = "A UNet3D model (from Load UNet3D Model, possibly already patched)."
LATER_WINS = " Applied twice, the node closest to the sampler wins."


def _clone_with_option(model, key, value):
    """A clone whose ``transformer_options["unet3d"][key]`` is ``value`` (nested dicts copied, never shared)."""
    clone = model.clone()
    options = dict(clone.model_options)
    transformer_options = dict(options.get("transformer_options") or {})
    ours = dict(transformer_options.get(OUR_KEY) or {})
    ours[key] = value
    transformer_options[OUR_KEY] = ours
    options["transformer_options"] = transformer_options
    clone.model_options = options
    return clone


def _unet(model):
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    if unet is None or not hasattr(unet, "set_attention_slice"):
        raise SettingError(f"This node patches UNet3D models; got a MODEL with diffusion_model "
                         f"{type(unet).__name__}. Connect it after 'Load UNet3D Model'.")
    return unet


# ---------------------------------------------------------------------------------------------------- FreeU
def core_freeu(model, b1, b2, s1, s2):
    """ComfyUI's own FreeU node applied to ``model`` (a V1 class before 0.8, a V3 class with a ``patch`` alias
    after); it picks decoder stages by channel count, as on SD1.5."""
    from comfy_extras.nodes_freelunch import FreeU
    return FreeU().patch(model, b1, b2, s1, s2)[0]


class UNet3DFreeU:
    DESCRIPTION = ("FreeU exactly as diffusers' enable_freeu on UNet3D: boosts the backbone features (b1, b2) and "
                   "damps the low frequencies of the skip features (s1, s2) of the first two decoder stages. "
                   "Defaults are the values published for ModelScope and Zeroscope. Core FreeU / FreeU_V2 also work "
                   "on UNet3D models (they pick stages by channel count, as on SD1.5). Returns a patched copy; the "
                   "input model is unchanged.")
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with FreeU applied while sampling.",)
    MODES = ("diffusers", "comfy")
    LIMIT = 10.0

    @classmethod
    def INPUT_TYPES(cls):
        def value(default, tip):
            return ("FLOAT", {"default": default, "min": 0.0, "max": cls.LIMIT, "step": 0.01, "tooltip": tip})
        return {"required": {
            "model": ("MODEL", {"tooltip": MODEL_TIP}),
            "b1": value(1.2, "Backbone factor of the coarsest decoder stage (first half of its channels)."),
            "b2": value(1.4, "Backbone factor of the second decoder stage."),
            "s1": value(0.9, "Skip-feature low-frequency factor of the coarsest decoder stage."),
            "s2": value(0.2, "Skip-feature low-frequency factor of the second decoder stage."),
        }, "optional": {
            "mode": (list(cls.MODES), {
                "default": "diffusers",
                "tooltip": "Kept so workflows saved with it still run. diffusers: this node's FreeU. comfy "
                           "(deprecated): runs core FreeU with these values; use the core FreeU node instead."}),
        }}

    def patch(self, model, b1, b2, s1, s2, mode="diffusers"):
        _unet(model)
        for name, number in (("b1", b1), ("b2", b2), ("s1", s1), ("s2", s2)):
            # NaN passes ComfyUI's min/max check and would turn every frame into NaN
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                    or not 0 <= number <= self.LIMIT:
                raise SettingError(f"UNet3D FreeU `{name}` must be a finite number from 0 to {self.LIMIT}, got "
                                   f"{number!r}")
        if mode not in self.MODES:
            raise SettingError(f"UNet3DFreeU mode must be one of {list(self.MODES)}, got {mode!r}")
        if mode == "comfy":
            log.warning("UNet3D FreeU: mode 'comfy' is deprecated; it now runs core FreeU. Replace this node by "
                        "core FreeU (model_patches) with the same values.")
            return (core_freeu(_clone_with_option(model, "freeu", None), b1, b2, s1, s2),)
        return (_clone_with_option(model, "freeu", {"s1": s1, "s2": s2, "b1": b1, "b2": b2}),)


# ---------------------------------------------------------------------------------------------------- slicing
def parse_slice_size(text) -> object:
    """'auto' | 'max' | a positive integer (given as text or number)."""
    value = str(text).strip().lower()
    if value in ("auto", "max"):
        return value
    try:
        number = int(value)
    except ValueError:
        raise SettingError(f"slice_size {text!r} is not 'auto', 'max' or a whole number") from None
    try:
        validate_slice_value(number)
    except ValueError as err:
        raise SettingError(str(err)) from None
    return number


class UNet3DAttentionSlicing:
    DESCRIPTION = ("Computes attention a few (batch x head) rows at a time to lower peak memory, with the same "
                   "result (to float rounding). Same meaning as diffusers' set_attention_slice. Returns a patched "
                   "copy; the input model is unchanged.")
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model computing attention in slices while sampling.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": MODEL_TIP}),
            "slice_size": ("STRING", {
                "default": "auto",
                "tooltip": "auto: half the heads of each layer per step; max: one row per step (least memory, "
                           "slowest); a number: that many rows per step (at most the smallest head count of the "
                           "model)." + LATER_WINS}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, slice_size):
        try:
            parse_slice_size(slice_size)
        except ValueError as err:
            return str(err)
        return True

    def patch(self, model, slice_size="auto"):
        value = parse_slice_size(slice_size)
        if isinstance(value, int):
            smallest = min(module.heads for _, module in _unet(model)._attention_modules())
            if value > smallest:
                raise SettingError(f"slice_size {value} is larger than the {smallest} heads of this model's smallest "
                                 f"attention layer; use 'auto', 'max' or a number up to {smallest}.")
        else:
            _unet(model)
        return (_clone_with_option(model, "attention_slice", value),)


# ---------------------------------------------------------------------------------------------------- chunking
class UNet3DForwardChunking:
    DESCRIPTION = ("Runs every transformer feed-forward in chunks to lower peak memory, with the same result (to "
                   "float rounding). Same meaning as diffusers' enable_forward_chunking. Returns a patched copy; the "
                   "input model is unchanged.")
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with chunked feed-forward layers while sampling.",)
    DIMS = {"batch": 0, "sequence": 1}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": MODEL_TIP}),
            "chunk_size": ("INT", {
                "default": 1, "min": 1, "max": 4096,
                "tooltip": "Rows per chunk. It must divide the chunked size in every transformer (1 always "
                           "does): with 'sequence', the frame count and the token count h*w of every level; with "
                           "'batch', frames x videos and h*w x videos."}),
            "dim": (list(cls.DIMS), {
                "default": "sequence",
                "tooltip": "sequence: chunk over tokens (spatial layers) and frames (temporal layers), as "
                           "diffusers recommends for Zeroscope; batch: over folded frames (spatial) and spatial "
                           "positions (temporal)." + LATER_WINS}),
        }}

    def patch(self, model, chunk_size=1, dim="sequence"):
        if dim not in self.DIMS:
            raise SettingError(f"dim must be one of {list(self.DIMS)}, got {dim!r}")
        _unet(model)
        chunk = validate_chunking(int(chunk_size), self.DIMS[dim])
        return (_clone_with_option(model, "ff_chunk", chunk),)
