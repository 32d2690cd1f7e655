"""The UNet3D as a ComfyUI model: its model config, ``BaseModel`` subclass (frame-count cond, memory estimate), and
the build that puts a loaded ``ComfyUNet3D`` inside it.

ComfyUI builds a BaseModel's ``diffusion_model`` itself unless ``unet_config["disable_unet_model_creation"]`` is set;
the loader sets it and hands in the UNet that ``unet3d.checkpoints.loading`` built on ``meta`` and filled with the
checkpoint's tensors (never two copies of the weights).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.ops
import comfy.supported_models_base
import torch
from comfy.ldm.modules.attention import optimized_attention

from ..unet3d.dtypes import name_of
from ..unet3d.memory.estimate import MemoryOptions, Workload, estimate
from . import memory_guard
from .latent import FRAMES_KEY
from .prompt_travel import PROMPT_FRAMES_KEY, check_prompt_frames

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


def dtype_label(dtype) -> str:
    """'fp16' etc. for a torch dtype; dtypes outside the table count as fp16 for estimates."""
    try:
        return name_of(dtype)
    except ValueError:
        return "fp16"


class UNet3DBaseModel(comfy.model_base.BaseModel):
    """BaseModel with the frame-count cond and a memory estimate that includes temporal attention."""

    def extra_conds(self, **kwargs):
        """The frame count a conditioning carries (``nodes.latent``) becomes the ``num_video_frames`` keyword of
        every model call on it; without one each cond chunk is one video. A per-frame conditioning is checked
        against the video's frame count here, before any model call."""
        out = super().extra_conds(**kwargs)
        frames = kwargs.get(FRAMES_KEY)
        if frames:
            out["num_video_frames"] = comfy.conds.CONDConstant(int(frames))
        if kwargs.get(PROMPT_FRAMES_KEY):   # per-frame prompts (nodes.prompt_travel) must fit the video's frames
            check_prompt_frames(kwargs[PROMPT_FRAMES_KEY], frames, kwargs.get("noise"))
        return out

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        """ComfyUI's apply_model, after refusing (MemoryLimitError) a call no memory setting can fit on the device."""
        chunks = len(transformer_options.get("cond_or_uncond") or [None])
        tokens = int(c_crossattn.shape[1]) if torch.is_tensor(c_crossattn) and c_crossattn.ndim == 3 else 77
        compute = dtype_label(self.manual_cast_dtype or self.get_dtype())
        memory_guard.check_call(self.__dict__.setdefault("_unet3d_fits", {}), self.diffusion_model.config, x, chunks,
                                kwargs.get("num_video_frames"), compute, tokens)
        return super().apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def memory_required(self, input_shape, cond_shapes={}):
        """Peak activation bytes of the largest UNet call (``unet3d.memory.estimate``), for ComfyUI's decision to
        load fully, partially (lowvram) or to split cond/uncond. ComfyUI passes the stacked rows of one step (cond and
        uncond: 2 x frames). With UNet3D Frame Batching on the patcher (ComfyUI sets ``current_patcher`` from 0.3 on),
        the largest windowed call counts."""
        rows, height, width = int(input_shape[0]), int(input_shape[-2]), int(input_shape[-1])
        chunks = 2 if rows % 2 == 0 and rows > 1 else 1
        context = (cond_shapes or {}).get("c_crossattn") or []
        tokens = int(context[0][1]) if context and len(context[0]) > 2 else 77
        weight_dtype = self.get_dtype()
        options = {"weight_dtype": dtype_label(weight_dtype),
                   "compute_dtype": dtype_label(self.manual_cast_dtype or weight_dtype)}
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


def operations_for(weight_dtype, manual_cast_dtype):
    """The comfy.ops namespace ComfyUI's own BaseModel would pick for these dtypes."""
    pick = getattr(comfy.ops, "pick_operations", None)   # 0.3 on; honours --fast
    if pick is not None:
        return pick(weight_dtype, manual_cast_dtype)
    return comfy.ops.manual_cast if manual_cast_dtype is not None else comfy.ops.disable_weight_init


def run_diffusion_model_wrappers(forward, model, *args, **kwargs):
    """``forward(*args, **kwargs)`` inside the diffusion-model wrappers of the call's ``transformer_options`` (the
    last positional argument), as ComfyUI's own UNet runs them."""
    import comfy.patcher_extension as ext
    wrappers = ext.get_all_wrappers(ext.WrappersMP.DIFFUSION_MODEL, args[-1])
    return ext.WrapperExecutor.new_class_executor(forward, model, wrappers).execute(*args, **kwargs)


def build_args(weight_dtype, manual_cast_dtype) -> dict:
    """Keyword arguments for building ``ComfyUNet3D``: the host's layers, attention kernel and (ComfyUI 0.3 on)
    diffusion-model wrappers."""
    has_wrappers = importlib.util.find_spec("comfy.patcher_extension") is not None and hasattr(
        importlib.import_module("comfy.patcher_extension").WrappersMP, "DIFFUSION_MODEL")
    return {"operations": operations_for(weight_dtype, manual_cast_dtype), "attention": optimized_attention,
            "run_wrapped": run_diffusion_model_wrappers if has_wrappers else None}


def wrap(unet, unet_config: dict, weight_dtype, offload_device, manual_cast_dtype=None):
    """A UNet3DBaseModel around an already loaded ``unet`` (ComfyUI does not build one of its own)."""
    cfg = UNet3DModelConfig({**unet_config, "disable_unet_model_creation": True})
    cfg.set_inference_dtype(weight_dtype, manual_cast_dtype)
    model = UNet3DBaseModel(cfg, model_type=comfy.model_base.ModelType.EPS, device=offload_device)
    model.diffusion_model = unet.eval()
    return model
