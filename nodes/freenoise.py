"""FreeNoise on a ComfyUI MODEL: a ``model_sampling`` object patch that reschedules the noise rows before scaling.

The sampler draws the noise before any model call, and the March-2024 host has no sampler wrappers. Every version
passes that noise through ``model_sampling.noise_scaling(sigma, noise, latent_image, max_denoise)`` of the patched
model (``comfy/samplers.py`` KSAMPLER.sample; also the inpainting re-noise and LCM's per-step noise), and honours
an object patch of ``model_sampling`` (what core ModelSamplingDiscrete installs). ``FreeNoiseSampling`` reorders the
rows of that noise (``unet3d.video.freenoise``) and hands them to the sampling object it replaced, which it answers
for in everything else. The rows are treated as one video: the frame-batching wrapper refuses several videos side by
side when this is on. No host import here.
"""
from __future__ import annotations

import torch

from ..unet3d.video.freenoise import freenoise_sources, reschedule_noise


class FreeNoiseSampling(torch.nn.Module):
    """ComfyUI's model sampling object with FreeNoise noise. ``inner`` (a submodule, so it moves with the model) is
    the object it replaces; attributes it lacks are looked up there."""

    def __init__(self, inner: torch.nn.Module, context_length: int, context_overlap: int, seed: int):
        super().__init__()
        self.inner = inner
        self.context_length, self.context_overlap, self.seed = context_length, context_overlap, seed

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False, *args, **kwargs):
        if torch.is_tensor(noise) and noise.ndim >= 1 and noise.shape[0] > self.context_length:
            sources = freenoise_sources(int(noise.shape[0]), self.context_length, self.context_overlap, self.seed)
            noise = reschedule_noise(noise, sources)
        return self.inner.noise_scaling(sigma, noise, latent_image, max_denoise, *args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("inner")
            if inner is None:
                raise
            return getattr(inner, name)


def current_model_sampling(patcher):
    """The sampling object ``patcher`` would sample with: its own object patch, else the model's original one (never
    another patcher's object that happens to be applied to the shared model right now)."""
    get = getattr(patcher, "get_model_object", None)      # ComfyUI 0.3 on
    if get is not None:
        return get("model_sampling")
    for patches in (patcher.object_patches, getattr(patcher, "object_patches_backup", None) or {}):
        if "model_sampling" in patches:
            return patches["model_sampling"]
    return patcher.model.model_sampling


def add_freenoise(patcher, context_length: int, context_overlap: int, seed: int) -> None:
    """Install FreeNoise on ``patcher`` (a clone). A FreeNoise object already there is replaced, not stacked."""
    inner = current_model_sampling(patcher)
    if isinstance(inner, FreeNoiseSampling):
        inner = inner.inner
    patcher.add_object_patch("model_sampling", FreeNoiseSampling(inner, context_length, context_overlap, seed))


def has_freenoise(apply_model) -> bool:
    """Whether the model behind a sampler's ``apply_model`` (a bound BaseModel method) samples with FreeNoise; True
    when that cannot be told."""
    sampling = getattr(getattr(apply_model, "__self__", None), "model_sampling", None)
    return sampling is None or isinstance(sampling, FreeNoiseSampling)
