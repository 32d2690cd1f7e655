"""``UNet3DEmptyLatentVideo``: an empty video latent with frames in the batch dimension.

The LATENT is 4-D ``(batch_size * frames, 4, height/8, width/8)``, rows ordered video-major, frame-minor, so the SD
VAE decode and every image node see ``batch_size * frames`` images. With one video (``batch_size`` 1) the model
derives the frame count from the rows it receives. With several videos the frame count cannot be derived from the
tensor, and core KSampler passes nothing from the LATENT to the model but the tensor: the node records
``frames`` in the LATENT dict (``"unet3d_frames"``) and in a small registry keyed by the tensor (identity, then
shape), which the model's ``extra_conds`` turns into a ``num_video_frames`` cond. A latent of the same shape made
later by this node with a different split overrides the shape entry (the identity entry still wins).
"""
from __future__ import annotations

import weakref

import comfy.model_management
import torch

from .memory_guard import check_latent

MAX_SIZE = 16384
_by_id: dict = {}      # id(tensor) -> (weakref to it, frames); tensors cannot be dict keys (== is elementwise)
_by_shape: dict = {}


def remember(samples: torch.Tensor, frames: int) -> None:
    key = id(samples)
    _by_id[key] = (weakref.ref(samples, lambda _ref, key=key: _by_id.pop(key, None)), frames)
    _by_shape[tuple(samples.shape)] = frames


def frames_for(latent_image, noise):
    """Frames per video for a sampler call, or None (one video per cond chunk)."""
    for tensor in (latent_image, noise):
        if torch.is_tensor(tensor):
            ref, frames = _by_id.get(id(tensor), (None, None))
            if ref is not None and ref() is tensor:
                return frames
    for tensor in (latent_image, noise):
        if torch.is_tensor(tensor):
            frames = _by_shape.get(tuple(tensor.shape))
            if frames:
                return frames
    return None


class UNet3DEmptyLatentVideo:
    DESCRIPTION = ("An empty (all-zero) latent for text-to-video: frames travel in the batch dimension, so "
                   "VAE Decode returns one image per frame.")
    CATEGORY = "video/unet3d"
    FUNCTION = "generate"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Latent of shape (batch_size*frames, 4, height/8, width/8); videos one after another.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "width": ("INT", {"default": 576, "min": 64, "max": MAX_SIZE, "step": 8,
                              "tooltip": "Video width in pixels (multiple of 8). Zeroscope v2 576w: 576; "
                                         "ModelScope 1.7B: 256."}),
            "height": ("INT", {"default": 320, "min": 64, "max": MAX_SIZE, "step": 8,
                               "tooltip": "Video height in pixels (multiple of 8). Zeroscope v2 576w: 320; "
                                          "ModelScope 1.7B: 256."}),
            "frames": ("INT", {"default": 24, "min": 1, "max": 4096,
                               "tooltip": "Frames per video. The models were trained on 16-24 frames."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                   "tooltip": "Number of videos sampled side by side (each gets its own noise)."}),
        }}

    def generate(self, width, height, frames, batch_size=1):
        shape, device = [batch_size * frames, 4, height // 8, width // 8], comfy.model_management.intermediate_device()
        check_latent(shape, 4, device, "Empty UNet3D Video Latent")
        samples = torch.zeros(shape, device=device)
        remember(samples, frames)
        return ({"samples": samples, "unet3d_frames": frames},)
