"""``ComfyUNet3D``: unet3d's UNet3DConditionModel with the forward signature ComfyUI's ``BaseModel.apply_model`` calls.

ComfyUI samples 4-D latents: a video of F frames travels as F rows of the batch ("frames as batch", like SVD), and
the sampler stacks k cond chunks (k = ``len(transformer_options["cond_or_uncond"])``) into ``(k*F, C, h, w)``.
``forward`` folds those rows into videos with ``unet3d.video.folding``, runs the model with the per-call options
``nodes.patch_protocol`` reads from ``transformer_options``, and unfolds the result. No maths here, and no ComfyUI
import: the host's attention function is handed in at construction.

Frames per video: the ``num_video_frames`` keyword when the sampler passes one (an extra cond), else one video per
cond chunk (F = rows // k).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

from ..unet3d import UNet3DConditionModel
from ..unet3d.network.attention import sdpa_attention
from ..unet3d.video.folding import fold, frame_layout, per_video, unfold
from .patch_protocol import call_options

log = logging.getLogger("unet3d")


def host_attention(attention: Optional[Callable]) -> Callable:
    """The host's attention kernel for unmasked calls; unet3d's torch SDPA when a real key mask is given (bool
    ``(batch, 1, kv_tokens)``, True = keep), since the host's backends treat masks differently."""
    if attention is None:
        return sdpa_attention

    def attend(q, k, v, heads, mask=None):
        return attention(q, k, v, heads) if mask is None else sdpa_attention(q, k, v, heads, mask)
    return attend


class ComfyUNet3D(UNet3DConditionModel):
    """The UNet3D as ComfyUI's ``diffusion_model``. ``attention``: the host's ``optimized_attention``;
    ``run_wrapped(forward, model, *args, **kwargs)``: runs the host's diffusion-model wrappers around ``forward``
    (ComfyUI's ``WrappersMP.DIFFUSION_MODEL``, which caches such as EasyCache use), where the host has them."""

    def __init__(self, model_channels=None, attention: Optional[Callable] = None,
                 run_wrapped: Optional[Callable] = None, **config):
        super().__init__(**config)
        self.attention = host_attention(attention)
        self.run_wrapped = run_wrapped
        self.eval()  # dropout in the temporal convolutions must be off (March 2024 ComfyUI never calls eval())

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        if self.run_wrapped is None:
            return self._forward(x, timesteps, context, y, control, transformer_options, **kwargs)
        # transformer_options goes last and positional: that is where ComfyUI's wrappers look for it
        return self.run_wrapped(self._forward, self, x, timesteps, context, y, control, transformer_options,
                                **kwargs)

    def _forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={},
                 num_video_frames=None, **kwargs):
        chunks = len(transformer_options.get("cond_or_uncond") or [None])
        layout = frame_layout(x.shape[0], chunks, num_video_frames)
        if num_video_frames and layout.frames != int(num_video_frames):
            log.warning("UNet3D: num_video_frames=%s does not divide the %s rows of each cond chunk; treating each "
                        "chunk as one video", num_video_frames, x.shape[0] // chunks)
        if control is not None and not getattr(self, "_warned_control", False):
            self._warned_control = True
            log.warning("UNet3D ignores ControlNet residuals (there is no UNet3D ControlNet)")
        if context is not None and context.shape[0] not in (layout.videos, layout.rows):
            raise ValueError(f"UNet3D: text context has {context.shape[0]} rows; expected one per video "
                             f"({layout.videos}) or per frame ({layout.rows})")
        options = call_options(transformer_options, self.attention, x.shape)
        out = super().forward(fold(x, layout), per_video(timesteps, layout), context, call_options=options,
                              return_dict=False)[0]
        return unfold(out)
