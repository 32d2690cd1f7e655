"""``UNet3DConditionModel``: the network plus diffusers' checkpoint methods (``from_pretrained``,
``from_single_file``, ``save_pretrained``, ``from_config``) and LoRA merging."""
from __future__ import annotations

import logging
from typing import List

from .checkpoints import loading
from .checkpoints.lora import merge_lora, unmerge_lora
from .network.config import UNet3DConfig
from .network.model import UNet3DNetwork

log = logging.getLogger("unet3d")


class UNet3DConditionModel(UNet3DNetwork):
    __doc__ = UNet3DNetwork.__doc__

    @classmethod
    def from_config(cls, config, **kwargs):
        """Build (random weights) from a config mapping such as a diffusers config.json; bookkeeping keys like
        ``_class_name`` and keys of other UNets are ignored, with a notice."""
        parsed, ignored = UNet3DConfig.from_dict(config)
        if ignored:
            log.info("UNet3DConditionModel.from_config ignores keys it does not use: %s", ignored)
        return cls(**parsed, **kwargs)

    @classmethod
    def from_pretrained(cls, path, subfolder=None, torch_dtype=None, variant=None, **kwargs):
        """Load a diffusers model folder (or a pipeline root, whose ``unet/`` is used)."""
        return loading.load_pretrained(cls, path, subfolder=subfolder, torch_dtype=torch_dtype, variant=variant,
                                       **kwargs)

    @classmethod
    def from_single_file(cls, path, config=None, torch_dtype=None, **kwargs):
        """Load one checkpoint file in the diffusers or original ModelScope layout (config inferred if not given)."""
        return loading.load_single_file(cls, path, config=config, torch_dtype=torch_dtype, **kwargs)

    def save_pretrained(self, folder, variant=None, **kwargs):
        """Write ``config.json`` and ``diffusion_pytorch_model[.variant].safetensors`` (the diffusers layout)."""
        return loading.save_pretrained(self, folder, variant=variant, **kwargs)

    def load_lora(self, lora, strength: float = 1.0) -> List[str]:
        """Merge a LoRA (a file path or a state dict; layouts: see ``unet3d.checkpoints.lora``) into the weights,
        scaled by ``strength``; returns the changed weight names. Several LoRAs add up; ``unload_lora`` undoes them."""
        return merge_lora(self, lora, strength)

    def unload_lora(self) -> None:
        """Restore, bit for bit, every weight changed by ``load_lora`` (a no-op when no LoRA is loaded)."""
        unmerge_lora(self)
