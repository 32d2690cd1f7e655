"""``UNet3DConditionModel``: the network plus diffusers' checkpoint methods (``from_pretrained``,
``from_single_file``, ``save_pretrained``), the rest of the ModelMixin / ConfigMixin surface scripts use
(``unet3d.model_mixin``), and LoRA merging."""
from __future__ import annotations

import logging
from typing import List

from .checkpoints import loading
from .checkpoints.lora import merge_lora, unmerge_lora
from .model_mixin import DiffusersModelSurface
from .network.model import UNet3DNetwork
from .pretrained_kwargs import check_local, parse_load_kwargs, parse_save_kwargs

log = logging.getLogger("unet3d")


class UNet3DConditionModel(DiffusersModelSurface, UNet3DNetwork):
    __doc__ = UNet3DNetwork.__doc__

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, **kwargs):
        """Load a local diffusers model folder (or a pipeline root, whose ``unet/`` is used), in eval mode.

        Takes diffusers' keyword arguments (``subfolder``, ``torch_dtype``/``dtype``, ``variant``,
        ``use_safetensors``, ``device_map`` naming one device, config fields...); see ``unet3d.pretrained_kwargs``
        for what each does here and which are out of scope (Hub download, accelerate dispatch, quantisation).
        """
        request = parse_load_kwargs(kwargs)
        check_local(pretrained_model_name_or_path, request.subfolder)
        model = loading.load_pretrained(
            cls, pretrained_model_name_or_path, subfolder=request.subfolder, torch_dtype=request.torch_dtype,
            variant=request.variant, device=request.device, use_safetensors=request.use_safetensors,
            config_overrides=request.config_overrides)
        model.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        if request.output_loading_info:  # the loader is strict: a model that loaded has nothing to report
            return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        return model

    @classmethod
    def from_single_file(cls, path, config=None, torch_dtype=None, **kwargs):
        """Load one checkpoint file in the diffusers or original ModelScope layout (config inferred if not given)."""
        return loading.load_single_file(cls, path, config=config, torch_dtype=torch_dtype, **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        """Write ``config.json`` and the weights in diffusers' layout; diffusers' keyword arguments
        (``variant``, ``safe_serialization``, ``max_shard_size``, ``is_main_process``). Returns the weight file, or
        the shard index."""
        return loading.save_pretrained(self, save_directory, **parse_save_kwargs(kwargs))

    def load_lora(self, lora, strength: float = 1.0) -> List[str]:
        """Merge a LoRA (a file path or a state dict; layouts: see ``unet3d.checkpoints.lora``) into the weights,
        scaled by ``strength``; returns the changed weight names. Several LoRAs add up; ``unload_lora`` undoes them."""
        return merge_lora(self, lora, strength)

    def unload_lora(self) -> None:
        """Restore, bit for bit, every weight changed by ``load_lora`` (a no-op when no LoRA is loaded)."""
        unmerge_lora(self)
