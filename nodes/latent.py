"""``UNet3DEmptyLatentVideo``: an empty video latent with frames in the batch dimension; the frame count travels on
the conditioning.

The LATENT is 4-D ``(batch_size * frames, 4, height/8, width/8)``, rows ordered video-major, frame-minor, so the SD
VAE decode and every image node see ``batch_size * frames`` images. ComfyUI's samplers hand the model nothing from a
LATENT but its tensor, so how many frames each video has travels on the conditioning, as core SVD's conditioning node
does: wired through this node, positive and negative carry ``FRAMES_KEY``, which the model's ``extra_conds`` turns
into ``num_video_frames``. Without a frame count the model treats each cond chunk (the whole latent batch) as one
video; that is the rule for every latent that comes without one (VAE Encode of frames, a loaded latent). Several
videos side by side (``batch_size`` > 1) therefore need positive and negative wired through this node, and the node
says so when they are not.
"""
from __future__ import annotations

import comfy.model_management
import torch

from ..unet3d.errors import UNet3DError
from .memory_guard import check_latent

MAX_SIZE = 16384
FRAMES_KEY = "unet3d_frames_per_video"


def with_frames(conditioning, frames: int):
    """A copy of a CONDITIONING list whose entries say ``frames`` frames per video (the tensors are shared)."""
    return [[tensor, {**options, FRAMES_KEY: frames}] for tensor, options in conditioning]


class UNet3DEmptyLatentVideo:
    DESCRIPTION = ("An empty (all-zero) latent for text-to-video: frames travel in the batch dimension, so VAE "
                   "Decode returns one image per frame. For several videos side by side, wire the prompt's positive "
                   "and negative conditioning through this node: they carry the frame count to the model.")
    CATEGORY = "video/unet3d"
    FUNCTION = "generate"
    RETURN_TYPES = ("LATENT", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("latent", "positive", "negative")
    OUTPUT_TOOLTIPS = ("Latent of shape (batch_size*frames, 4, height/8, width/8); videos one after another.",
                       "The positive input, marked with the frames per video (connect the input to use it).",
                       "The negative input, marked with the frames per video (connect the input to use it).")

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
                               "tooltip": "Frames per video. The models were trained on 16-24."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                   "tooltip": "Number of videos sampled side by side (each gets its own noise). "
                                              "More than 1 needs positive and negative wired through this node."}),
        }, "optional": {
            "positive": ("CONDITIONING", {"tooltip": "The prompt's conditioning, to carry the frame count (needed "
                                                     "when batch_size > 1)."}),
            "negative": ("CONDITIONING", {"tooltip": "The negative prompt's conditioning, likewise."}),
        }}

    def generate(self, width, height, frames, batch_size=1, positive=None, negative=None):
        if batch_size > 1 and (positive is None or negative is None):
            missing = " and ".join(n for n, c in (("positive", positive), ("negative", negative)) if c is None)
            raise UNet3DError(
                f"Empty UNet3D Video Latent: batch_size {batch_size} samples {batch_size} videos of {frames} frames "
                f"side by side, and the model learns where one video ends from the conditioning. Connect {missing} "
                f"through this node (its positive/negative outputs go to the sampler), or set batch_size to 1; "
                f"otherwise the {batch_size * frames} latent rows would be sampled as one long video.")
        shape, device = [batch_size * frames, 4, height // 8, width // 8], comfy.model_management.intermediate_device()
        check_latent(shape, 4, device, "Empty UNet3D Video Latent")
        samples = torch.zeros(shape, device=device)
        marked = [None if c is None else with_frames(c, frames) for c in (positive, negative)]
        return ({"samples": samples}, *marked)
