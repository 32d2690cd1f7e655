"""``UNet3DPromptTravel``: keyframed prompts -> a CONDITIONING with one text embedding per frame.

Glue only: the schedule's grammar and the blending are ``unet3d.video.prompt_schedule``; each distinct keyframe prompt
is encoded once with the CLIP's own tokenizer and encoder (as CLIPTextEncode does). The conditioning holds
``(frames, tokens, dim)``: ComfyUI repeats a conditioning to the sampler's batch, so the F rows tile over several
videos of F frames, and the model (with or without frame batching) gives every frame row its own row. The entry also
carries ``PROMPT_FRAMES_KEY``, which the model checks against the video it samples (``check_prompt_frames``), so a
schedule made for another frame count fails instead of tiling silently. No host import here.
"""
from __future__ import annotations

from ..unet3d.errors import UNet3DError
from ..unet3d.video.prompt_schedule import (
    INTERPOLATIONS,
    MAX_FRAMES,
    blend_rows,
    common_token_count,
    frame_blends,
    parse_schedule,
)

PROMPT_FRAMES_KEY = "unet3d_prompt_frames"
DEFAULT_SCHEDULE = "0: a calm sea at dawn, soft light\n48: a storm at sea, huge waves, lightning"


def encode_text(clip, text: str):
    """(embedding ``(1, tokens, dim)``, pooled ``(1, dim)`` or None), as CLIPTextEncode encodes ``text``."""
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return cond, pooled


def check_prompt_frames(prompt_frames: int, frames_per_video, noise) -> None:
    """Raise when a per-frame conditioning made for ``prompt_frames`` frames meets a video of another length.
    ``frames_per_video``: the conditioning's frame count (None: the latent is one video); ``noise``: the latent rows."""
    rows = int(noise.shape[0]) if getattr(noise, "shape", None) else None
    frames = int(frames_per_video) if frames_per_video else rows
    if frames is not None and frames != int(prompt_frames):
        where = f"{rows // frames} videos of {frames} frames" if rows and rows != frames else f"{frames} frames"
        raise UNet3DError(f"UNet3D Prompt Travel: the schedule gives {prompt_frames} frames their prompts, but the "
                          f"sampler's latent holds {where}. Set the Prompt Travel node's frames to {frames} (the "
                          f"frames of Empty UNet3D Video Latent).")


class UNet3DPromptTravel:
    DESCRIPTION = ("Keyframed prompts for a video: '0: a calm sea' and '48: a storm at sea', one per line. Every frame "
                   "gets its own text embedding, blended between keyframes, and the UNet3D model applies them frame "
                   "by frame (also in UNet3D Frame Batching windows). Use it as the positive prompt; a normal CLIP "
                   "Text Encode works as the negative.")
    CATEGORY = "video/unet3d"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("One text embedding per frame (frames rows). For several videos side by side, pass it through "
                       "Empty UNet3D Video Latent like any positive.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "The text encoder (core Load CLIP, type stable_diffusion)."}),
            "text": ("STRING", {"multiline": True, "default": DEFAULT_SCHEDULE,
                                "tooltip": "Keyframes 'FRAME: prompt', one per line (or comma-separated). Frames count "
                                           "from 0, increase, and stay below frames. Frames before the first keyframe "
                                           "take its prompt, frames after the last keep the last."}),
            "frames": ("INT", {"default": 96, "min": 1, "max": MAX_FRAMES,
                               "tooltip": "Frames per video: the frames of Empty UNet3D Video Latent."}),
            "interpolation": (list(INTERPOLATIONS), {"default": "linear",
                                                     "tooltip": "linear: blend the embeddings of neighbouring "
                                                                "keyframes by the frame's position. hold: keep each "
                                                                "prompt until the next keyframe (hard cuts)."}),
        }}

    def encode(self, clip, text, frames, interpolation):
        keyframes = parse_schedule(text, frames)
        blends = frame_blends(keyframes, frames, interpolation)
        encoded = {}
        for keyframe in keyframes:
            if keyframe.text not in encoded:
                encoded[keyframe.text] = encode_text(clip, keyframe.text)
        conds = [encoded[k.text][0] for k in keyframes]
        common_token_count([c.shape[1] for c in conds], [f"keyframe {k.frame}" for k in keyframes])
        options = {PROMPT_FRAMES_KEY: frames}
        pooled = [encoded[k.text][1] for k in keyframes]
        if all(p is not None for p in pooled):
            options["pooled_output"] = blend_rows(pooled, blends)
        return ([[blend_rows(conds, blends), options]],)
