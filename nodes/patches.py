"""Patch nodes: FreeU, attention slicing and feed-forward chunking for UNet3D models.

Each node clones the ModelPatcher and writes plain data into the clone's ``model_options["transformer_options"]``
(the ``unet3d`` key, read by ``unet3d.options`` on every forward call) or appends an ``output_block_patch``. Nothing
is written into the shared torch module, so the input MODEL and every other branch of the graph stay as they were.
"""
from __future__ import annotations

from ..unet3d.freeu import apply_freeu
from ..unet3d.options import validate_chunking, validate_slice_value

CATEGORY = "video/unet3d"
MODEL_TIP = "A UNet3D model (from Load UNet3D Model, possibly already patched)."
LATER_WINS = " Applied twice, the node closest to the sampler wins."


def _clone_with_option(model, key, value):
    """A clone whose ``transformer_options["unet3d"][key]`` is ``value`` (nested dicts copied, never shared)."""
    clone = model.clone()
    options = dict(clone.model_options)
    transformer_options = dict(options.get("transformer_options") or {})
    ours = dict(transformer_options.get("unet3d") or {})
    ours[key] = value
    transformer_options["unet3d"] = ours
    options["transformer_options"] = transformer_options
    clone.model_options = options
    return clone


def _unet(model):
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    if unet is None or not hasattr(unet, "set_attention_slice"):
        raise ValueError(f"This node patches UNet3D models; got a MODEL with diffusion_model "
                         f"{type(unet).__name__}. Connect it after 'Load UNet3D Model'.")
    return unet


# ---------------------------------------------------------------------------------------------------- FreeU
def comfy_freeu_patch(model_channels: int, b1: float, b2: float, s1: float, s2: float):
    """ComfyUI's FreeU stage choice: by the decoder feature's channel count (4x and 2x the base channels)."""
    stages = {model_channels * 4: (b1, s1), model_channels * 2: (b2, s2)}

    def output_block_patch(h, hsp, transformer_options):
        stage = stages.get(int(h.shape[1]))
        return (h, hsp) if stage is None else apply_freeu(h, hsp, *stage)
    output_block_patch.unet3d_freeu = True  # marks our patch so a later UNet3DFreeU replaces it
    return output_block_patch


class UNet3DFreeU:
    DESCRIPTION = ("FreeU for UNet3D video models: boosts the decoder's backbone features (b1, b2) and damps the "
                   "low frequencies of its skip features (s1, s2). Defaults are the values published for "
                   "ModelScope and Zeroscope. Returns a patched copy; the input model is unchanged.")
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with FreeU applied while sampling.",)

    @classmethod
    def INPUT_TYPES(cls):
        def value(default, tip):
            return ("FLOAT", {"default": default, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": tip})
        return {"required": {
            "model": ("MODEL", {"tooltip": MODEL_TIP}),
            "b1": value(1.2, "Backbone factor of the coarsest decoder stage (first half of its channels)."),
            "b2": value(1.4, "Backbone factor of the second decoder stage."),
            "s1": value(0.9, "Skip-feature low-frequency factor of the coarsest decoder stage."),
            "s2": value(0.2, "Skip-feature low-frequency factor of the second decoder stage."),
            "mode": (["diffusers", "comfy"], {
                "default": "diffusers",
                "tooltip": "diffusers: exactly diffusers' enable_freeu (first two up blocks by position; a 0 in "
                           "any value turns it off). comfy: ComfyUI's FreeU stage choice by channel count (4x and "
                           "2x the base channels), as the core FreeU node does on image models." + LATER_WINS}),
        }}

    def patch(self, model, b1, b2, s1, s2, mode="diffusers"):
        _unet(model)
        if mode == "diffusers":
            clone = _clone_with_option(model, "freeu", {"s1": s1, "s2": s2, "b1": b1, "b2": b2})
            _drop_our_freeu_patches(clone)
            return (clone,)
        if mode != "comfy":
            raise ValueError(f"UNet3DFreeU mode must be 'diffusers' or 'comfy', got {mode!r}")
        clone = _clone_with_option(model, "freeu", None)  # an earlier diffusers-mode FreeU stops here
        _drop_our_freeu_patches(clone)
        clone.set_model_output_block_patch(comfy_freeu_patch(_model_channels(model), b1, b2, s1, s2))
        return (clone,)


def _model_channels(model) -> int:
    unet_config = getattr(model.model.model_config, "unet_config", {}) or {}
    return int(unet_config.get("model_channels") or _unet(model).config["block_out_channels"][0])


def _drop_our_freeu_patches(clone) -> None:
    """Remove an earlier UNet3DFreeU (comfy mode) from the clone's own copy of the patch lists."""
    transformer_options = clone.model_options["transformer_options"]
    patches = dict(transformer_options.get("patches") or {})
    kept = [p for p in patches.get("output_block_patch", []) if not getattr(p, "unet3d_freeu", False)]
    if "output_block_patch" in patches:
        patches["output_block_patch"] = kept
    transformer_options["patches"] = patches


# ---------------------------------------------------------------------------------------------------- slicing
def parse_slice_size(text) -> object:
    """'auto' | 'max' | a positive integer (given as text or number)."""
    value = str(text).strip().lower()
    if value in ("auto", "max"):
        return value
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"slice_size {text!r} is not 'auto', 'max' or a whole number") from None
    validate_slice_value(number)
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
                raise ValueError(f"slice_size {value} is larger than the {smallest} heads of this model's smallest "
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
            raise ValueError(f"dim must be one of {list(self.DIMS)}, got {dim!r}")
        _unet(model)
        chunk = validate_chunking(int(chunk_size), self.DIMS[dim])
        return (_clone_with_option(model, "ff_chunk", chunk),)
