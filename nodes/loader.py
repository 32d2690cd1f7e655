"""``UNet3DLoader``: a ModelScope / Zeroscope UNet3D checkpoint from ComfyUI's model folders -> ``MODEL``.

Thin glue: folder_paths finds the file, ``unet3d.checkpoints.loading`` reads it (original or diffusers layout, safe
loading, config checked before anything is allocated) and builds the UNet on ``meta`` from comfy.ops layers with the
weights assigned (one copy), ``model_base.wrap`` puts it in a BaseModel, and a ModelPatcher with ComfyUI's load /
offload devices hands it to model management (lowvram streaming, fp8 storage via manual_cast).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Tuple

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths

from ..unet3d.checkpoints.folders import default_weight_files, read_json
from ..unet3d.checkpoints.loading import build_model, read_checkpoint
from ..unet3d.dtypes import WEIGHT_DTYPES as STORAGE_DTYPES
from ..unet3d.dtypes import by_name
from ..unet3d.errors import CheckpointError, CheckpointNotFoundError, SettingError
from .model_base import UNet3DModelConfig, build_args, wrap
from .unet_adapter import ComfyUNet3D

log = logging.getLogger("unet3d")

DIFFUSERS_TAG = "[diffusers] "
MAX_FOLDERS_WALKED = 20_000     # folders looked at under the diffusers model folders, for one listing
# "default" lets ComfyUI pick for the device; the rest are the storage dtypes of unet3d's dtype table.
WEIGHT_DTYPES = {"default": None, **{name: by_name(name).torch for name in STORAGE_DTYPES if name != "fp8_e5m2"}}


def _diffusers_unet_dirs() -> List[Tuple[str, str]]:
    """(display name, unet directory) for every diffusers UNet3D under the 'diffusers' model folders: a pipeline
    folder with ``unet/config.json`` or a bare UNet folder whose config.json names UNet3DConditionModel."""
    found, seen = [], set()
    for root in folder_paths.get_folder_paths("diffusers"):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen or len(seen) >= MAX_FOLDERS_WALKED:  # a symlink loop, or a folder reached twice
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames.sort()
            if "config.json" not in filenames:
                continue
            try:
                is_unet3d = read_json(Path(dirpath) / "config.json").get("_class_name") == "UNet3DConditionModel"
            except CheckpointError:
                continue
            if is_unet3d:
                rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
                if rel.endswith("/unet"):
                    rel = rel[: -len("/unet")]
                found.append((DIFFUSERS_TAG + rel, dirpath))
    return found


def unet_choices() -> List[str]:
    return folder_paths.get_filename_list("unet") + [name for name, _ in _diffusers_unet_dirs()]


def resolve(unet_name: str) -> Tuple[List[str], Optional[str]]:
    """(weight files, config.json path or None) for a combo value."""
    if unet_name.startswith(DIFFUSERS_TAG):
        for name, unet_dir in _diffusers_unet_dirs():
            if name == unet_name:
                return default_weight_files(Path(unet_dir)), os.path.join(unet_dir, "config.json")
    else:
        path = folder_paths.get_full_path("unet", unet_name)
        if path is not None:
            return [path], None
    roots = folder_paths.get_folder_paths("unet") + folder_paths.get_folder_paths("diffusers")
    raise CheckpointNotFoundError(f"UNet3D model {unet_name!r} was not found. Put the .safetensors/.pth file in one "
                                  f"of {roots} (or a diffusers folder with unet/config.json under the diffusers "
                                  f"folders) and refresh the node list.")


def load_unet3d(unet_name: str, weight_dtype: str = "default"):
    if weight_dtype not in WEIGHT_DTYPES:
        raise SettingError(f"weight_dtype {weight_dtype!r} is not one of {list(WEIGHT_DTYPES)}")
    paths, config_path = resolve(unet_name)
    checkpoint = read_checkpoint(paths, config_path)
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    supported = UNet3DModelConfig.supported_inference_dtypes
    dtype = WEIGHT_DTYPES[weight_dtype] or mm.unet_dtype(model_params=checkpoint.parameters,
                                                          supported_dtypes=supported)
    manual_cast = mm.unet_manual_cast(dtype, load_device, supported)
    unet = build_model(ComfyUNet3D, checkpoint, dtype, offload_device, **build_args(dtype, manual_cast))
    unet_config = {**checkpoint.config, "model_channels": checkpoint.config["block_out_channels"][0]}
    model = wrap(unet, unet_config, dtype, offload_device, manual_cast)   # model_channels: read by core FreeU
    log.info("UNet3D loaded from %s (%s layout, weights %s, compute %s)", checkpoint.info.source,
             checkpoint.info.layout, dtype, manual_cast or dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


class UNet3DLoader:
    DESCRIPTION = ("Loads a ModelScope text-to-video / Zeroscope UNet3D (original .pth/.safetensors, or diffusers "
                   "format) as a MODEL for the core samplers. Use an SD2 OpenCLIP-H text encoder and an SD1.5 VAE.")
    CATEGORY = "video/unet3d"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The UNet3D video diffusion model (eps prediction, SD latent space); frames travel in the "
                       "latent batch.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "unet_name": (unet_choices(), {
                "tooltip": "UNet3D weights: a file in models/unet or models/diffusion_models (e.g. Zeroscope's "
                           "text2video_pytorch_model.pth), or a diffusers folder under models/diffusers "
                           "(listed as '[diffusers] name')."}),
            "weight_dtype": (list(WEIGHT_DTYPES), {
                "default": "default",
                "tooltip": "Storage dtype of the weights. 'default' lets ComfyUI choose for your device; fp8 halves "
                           "memory again (computed in fp16/bf16/fp32)."}),
        }}

    def load(self, unet_name, weight_dtype="default"):
        return (load_unet3d(unet_name, weight_dtype),)
