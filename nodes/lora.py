"""``UNet3DLoraLoader``: a UNet3D LoRA from ComfyUI's ``loras`` folder, applied as ModelPatcher weight patches.

``unet3d.checkpoints.lora`` reads the file's layout and maps it onto the model's (diffusers) weight names; ComfyUI's own
``comfy.lora.load_lora`` turns the canonical ``lora_up`` / ``lora_down`` / ``alpha`` entries into the patch objects
of the running ComfyUI version. ModelPatcher adds them to a backup-protected copy of the weights while the clone is
loaded, so the cached MODEL never changes and removing the node is exact and free.
"""
from __future__ import annotations

import logging

import comfy.lora
import folder_paths

from ..unet3d.checkpoints.lora import (
    STRENGTH_LIMIT,
    LoraError,
    canonical_lora,
    check_strength,
    parse_lora,
    read_lora,
)
from ..unet3d.errors import CheckpointNotFoundError
from .patches import CATEGORY, MODEL_TIP, _unet

log = logging.getLogger("unet3d")
PREFIX = "diffusion_model."


def lora_patches(model, lora_sd, source):
    """(comfy patches keyed ``diffusion_model.<weight>``, ParsedLora) for a UNet3D ModelPatcher."""
    unet = _unet(model)
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    config = unet.config
    parsed = parse_lora(read_lora(lora_sd, source)[0], shapes, config["layers_per_block"],
                        len(config["block_out_channels"]), source)
    canonical = canonical_lora(parsed, shapes)
    to_load = {key[:-len(".weight")]: PREFIX + key for key in parsed.pairs}
    patches = comfy.lora.load_lora(canonical, to_load)
    if len(patches) != len(parsed.pairs):
        raise LoraError(f"{source}: ComfyUI built {len(patches)} weight patches for {len(parsed.pairs)} adapted "
                        f"weights; this ComfyUI version's LoRA loader does not read the canonical layout.")
    return patches, parsed


class UNet3DLoraLoader:
    DESCRIPTION = ("Applies a LoRA to a UNet3D video model (diffusers/PEFT, kohya-style or Text-To-Video-Finetuning "
                   "stable_lora files, with diffusers or ModelScope layer names). Returns a patched copy: the input "
                   "model is unchanged, and removing the node gives the original results exactly.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the LoRA's weight changes applied while sampling.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": MODEL_TIP}),
            "lora_name": (folder_paths.get_filename_list("loras"), {
                "tooltip": "A UNet3D LoRA file in models/loras. Text-encoder parts of the file are ignored."}),
            "strength": ("FLOAT", {
                "default": 1.0, "min": -STRENGTH_LIMIT, "max": STRENGTH_LIMIT, "step": 0.01,
                "tooltip": "Multiplies the LoRA's weight change (0: no effect; negative values invert it). "
                           "Several LoRA nodes in a row add up."}),
        }}

    def load(self, model, lora_name, strength=1.0):
        strength = check_strength(strength)  # NaN passes ComfyUI's min/max check and would poison every frame
        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise CheckpointNotFoundError(f"LoRA {lora_name!r} was not found in "
                                          f"{folder_paths.get_folder_paths('loras')}; put the file there and refresh "
                                          f"the node list.")
        sd, _ = read_lora(path)  # unet3d's safe reader: weights-only pickles, checked headers, errors naming the file
        patches, parsed = lora_patches(model, sd, path)
        if parsed.unmatched:
            log.warning("UNet3D LoRA %s: %d entries match no weight of this model and were ignored (first: %s)",
                        lora_name, len(parsed.unmatched), ", ".join(parsed.unmatched[:3]))
        if parsed.skipped_text_keys:
            log.info("UNet3D LoRA %s: %d text-encoder entries ignored (this node patches the UNet only)",
                     lora_name, len(parsed.skipped_text_keys))
        clone = model.clone()
        applied = clone.add_patches(patches, strength)
        if len(applied) != len(patches):
            missing = sorted(set(patches) - set(applied))[:3]
            raise LoraError(f"{path}: ModelPatcher did not accept {len(patches) - len(applied)} patches (first: "
                            f"{missing}); the model's weight names differ from its state dict.")
        log.info("UNet3D LoRA %s (%s): %d weights, strength %s", lora_name, ", ".join(parsed.layouts),
                 len(applied), strength)
        return (clone,)
