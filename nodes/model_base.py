"""The seam between ComfyUI and the pure-PyTorch UNet3D: model config, BaseModel and the frames fold/unfold.

ComfyUI samples 4-D latents. A video of F frames travels as F rows of the batch ("frames as batch", like SVD), and
the sampler stacks k cond chunks (k = ``len(transformer_options["cond_or_uncond"])``: 1 with cfg 1 or separate
batches, 2 or more otherwise) into ``(k*F, C, h, w)``. ``ComfyUNet3D.forward`` folds those rows into ``k*V`` videos
of F frames, runs ``unet3d.UNet3DConditionModel`` on ``(k*V, C, F, h, w)`` and unfolds the result. No maths here.

Frames per video (F): when the latent came from ``UNet3DEmptyLatentVideo`` with ``batch_size`` V > 1, the model
receives a ``num_video_frames`` cond (``extra_conds``, the SVD pattern) looked up in ``nodes.latent``'s registry;
otherwise every sampler call holds one video per cond chunk and F = rows // k. ComfyUI 0.8.0's core context windows
rewrite ``num_video_frames`` to the window length, which is what a window needs.
"""
from __future__ import annotations

import logging

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.supported_models_base
from comfy.ldm.modules.attention import optimized_attention

from ..unet3d import UNet3DConditionModel
from ..unet3d.attention import sdpa_attention
from ..unet3d.estimate import MemoryOptions, Workload, dtype_name, estimate
from . import latent as latent_registry

log = logging.getLogger("unet3d")


class UNet3DModelConfig(comfy.supported_models_base.BASE):
    """Model config for ModelScope / Zeroscope: eps prediction, SD scaled-linear betas, SD1.5 latents.
    Never registered in ``comfy.supported_models`` (no auto-detection of UNet3D checkpoints by core loaders)."""

    unet_config = {}
    unet_extra_config = {}  # BASE's default would inject num_heads / num_head_channels into the constructor kwargs
    latent_format = comfy.latent_formats.SD15
    sampling_settings = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012}
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]
    memory_usage_factor = 1.0


def _attention(q, k, v, heads, mask=None):
    """ComfyUI's optimized attention (xformers / SDPA / sub-quadratic, chosen at start-up); unet3d's torch SDPA when a
    real key mask is given (bool ``(batch, 1, kv_tokens)``, True = keep), since the backends treat masks differently."""
    if mask is None:
        return optimized_attention(q, k, v, heads)
    return sdpa_attention(q, k, v, heads, mask)


def frames_layout(rows: int, transformer_options: dict, num_video_frames=None):
    """(videos, frames) for ``rows`` batch rows. ``videos`` counts every cond chunk's videos."""
    chunks = len(transformer_options.get("cond_or_uncond") or [None])
    if rows % chunks:
        raise ValueError(f"UNet3D got {rows} latent rows for {chunks} cond chunks; rows must split evenly")
    per_chunk = rows // chunks
    frames = int(num_video_frames) if num_video_frames else per_chunk
    if frames < 1 or per_chunk % frames:
        log.warning("UNet3D: num_video_frames=%s does not divide %s rows per cond chunk; treating each chunk as "
                    "one video", num_video_frames, per_chunk)
        frames = per_chunk
    return rows // frames, frames


class ComfyUNet3D(UNet3DConditionModel):
    """``unet3d.UNet3DConditionModel`` with the forward signature ComfyUI's ``BaseModel.apply_model`` calls."""

    def __init__(self, model_channels=None, **config):
        super().__init__(**config)
        self.eval()  # dropout in the temporal convolutions must be off (March 2024 ComfyUI never calls eval())

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={},
                num_video_frames=None, **kwargs):
        videos, frames = frames_layout(x.shape[0], transformer_options, num_video_frames)
        if control is not None and not getattr(self, "_warned_control", False):
            self._warned_control = True
            log.warning("UNet3D ignores ControlNet residuals (there is no UNet3D ControlNet)")
        sample = x.reshape(videos, frames, *x.shape[1:]).transpose(1, 2)       # (V, C, F, h, w)
        t = timesteps
        if torch.is_tensor(t) and t.ndim == 1 and t.shape[0] == x.shape[0]:
            t = t.reshape(videos, frames)[:, 0]                                 # one timestep per video
        if context is not None and context.shape[0] not in (videos, x.shape[0]):
            raise ValueError(f"UNet3D: text context has {context.shape[0]} rows; expected one per video "
                             f"({videos}) or per frame ({x.shape[0]})")
        options = dict(transformer_options)                                    # the caller's dict stays untouched
        ours = dict(options.get("unet3d") or {})
        ours.setdefault("attention_fn", _attention)
        options["unet3d"] = ours
        out = super().forward(sample, t, context, transformer_options=options, return_dict=False)[0]
        return out.transpose(1, 2).reshape(x.shape[0], *out.shape[1:2], *x.shape[2:])


class UNet3DBaseModel(comfy.model_base.BaseModel):
    """BaseModel with the frame-count cond and a memory estimate that includes temporal attention."""

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        noise = kwargs.get("noise")
        frames = latent_registry.frames_for(kwargs.get("latent_image"), noise)
        if frames:
            out["num_video_frames"] = comfy.conds.CONDConstant(frames)
        return out

    def memory_required(self, input_shape, cond_shapes={}):
        """Peak activation bytes of the largest UNet call (``unet3d.estimate``), for ComfyUI's decision to load
        fully, partially (lowvram) or to split cond/uncond. ComfyUI passes the stacked rows of one step (cond and
        uncond: 2 x frames). With UNet3D Frame Batching on the patcher (ComfyUI sets ``current_patcher`` from
        0.3 on), the largest windowed call counts."""
        rows, height, width = int(input_shape[0]), int(input_shape[-2]), int(input_shape[-1])
        chunks = 2 if rows % 2 == 0 and rows > 1 else 1
        context = (cond_shapes or {}).get("c_crossattn") or []
        tokens = int(context[0][1]) if context and len(context[0]) > 2 else 77
        weight_dtype = self.get_dtype()
        options = {"weight_dtype": dtype_name(weight_dtype),
                   "compute_dtype": dtype_name(self.manual_cast_dtype or weight_dtype)}
        wrapper = (getattr(getattr(self, "current_patcher", None), "model_options", None) or {}).get(
            "model_function_wrapper")
        settings = getattr(wrapper, "settings", None)
        if settings is not None and hasattr(wrapper, "max_batch_rows"):
            options.update(context_length=settings.context_length, context_overlap=settings.context_overlap,
                           context_stride=settings.context_stride, closed_loop=settings.closed_loop,
                           max_batch_rows=wrapper.max_batch_rows)
        workload = Workload(frames=rows // chunks, height=height, width=width, cond_chunks=chunks, tokens=tokens)
        try:
            return estimate(self.diffusion_model.config, workload, MemoryOptions(**options)).activation_bytes
        except ValueError as err:  # e.g. windows longer than the video: fall back to no windows
            log.debug("UNet3D memory estimate without frame batching (%s)", err)
            for key in ("context_length", "max_batch_rows"):
                options.pop(key, None)
            return estimate(self.diffusion_model.config, workload, MemoryOptions(**options)).activation_bytes


def build_model(unet_config: dict, weight_dtype, load_device, offload_device, manual_cast_dtype=None):
    """BaseModel around a ComfyUNet3D made of comfy.ops layers (weights uninitialised until loaded)."""
    cfg = UNet3DModelConfig(unet_config)
    cfg.set_inference_dtype(weight_dtype, manual_cast_dtype)
    model = UNet3DBaseModel(cfg, model_type=comfy.model_base.ModelType.EPS, device=offload_device,
                            unet_model=ComfyUNet3D)
    model.diffusion_model.eval()
    return model
