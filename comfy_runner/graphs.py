"""API-format prompts for the UNet3D text-to-video graph (used by the host tests; handy for scripts too).

Node ids are fixed so callers can capture outputs: "1" loader, "2" CLIP, "3" VAE, "4"/"5" positive/negative,
"6" empty video latent, "7" sampler, "8" VAE decode, "9" output, "10" (then "10-1", "10-2"...) optional model
patches, "11"/"12" sampler and sigmas for SamplerCustom.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple, Union

LOADER, CLIP, VAE, POS, NEG, LATENT, SAMPLER, DECODE, OUTPUT, PATCH = "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"


def t2v_prompt(unet: str, clip: str, vae: str = "taesd", *, width: int = 128, height: int = 128, frames: int = 8,
               batch_size: int = 1, seed: int = 1, steps: int = 2, cfg: float = 7.0, sampler_name: str = "euler",
               scheduler: str = "normal", positive: str = "a red panda surfing a wave", negative: str = "blurry",
               sampler: str = "KSampler", output: str = "latent", prefix: str = "unet3d_test",
               weight_dtype: str = "default",
               patch: Union[None, Tuple[str, Dict[str, Any]], List[Tuple[str, Dict[str, Any]]]] = None
               ) -> Dict[str, Any]:
    """``output``: "latent" (SaveLatent, cheap) or "webp" (VAEDecode -> SaveAnimatedWEBP). ``patch``: one
    ``(node class, inputs)`` or a list of them, chained on the MODEL path from the loader to the sampler."""
    model = [LOADER, 0]
    p: Dict[str, Any] = {
        LOADER: {"class_type": "UNet3DLoader", "inputs": {"unet_name": unet, "weight_dtype": weight_dtype}},
        CLIP: {"class_type": "CLIPLoader", "inputs": {"clip_name": clip, "type": "stable_diffusion"}},
        POS: {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": [CLIP, 0]}},
        NEG: {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": [CLIP, 0]}},
        LATENT: {"class_type": "UNet3DEmptyLatentVideo",
                 "inputs": {"width": width, "height": height, "frames": frames, "batch_size": batch_size}},
    }
    chain = [] if patch is None else [patch] if isinstance(patch, tuple) else list(patch)
    for i, (cls, inputs) in enumerate(chain):
        node = PATCH if i == 0 else f"{PATCH}-{i}"
        p[node] = {"class_type": cls, "inputs": {"model": model, **inputs}}
        model = [node, 0]
    common = {"model": model, "positive": [POS, 0], "negative": [NEG, 0], "latent_image": [LATENT, 0]}
    if batch_size > 1:  # several videos: the conditioning carries the frame count (through the latent node)
        p[LATENT]["inputs"].update(positive=[POS, 0], negative=[NEG, 0])
        common.update(positive=[LATENT, 1], negative=[LATENT, 2])
    if sampler == "KSampler":
        p[SAMPLER] = {"class_type": "KSampler", "inputs": {
            **common, "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler_name,
            "scheduler": scheduler, "denoise": 1.0}}
    elif sampler == "KSamplerAdvanced":
        p[SAMPLER] = {"class_type": "KSamplerAdvanced", "inputs": {
            **common, "add_noise": "enable", "noise_seed": seed, "steps": steps, "cfg": cfg,
            "sampler_name": sampler_name, "scheduler": scheduler, "start_at_step": 0, "end_at_step": 10000,
            "return_with_leftover_noise": "disable"}}
    elif sampler == "SamplerCustom":
        p["11"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler_name}}
        p["12"] = {"class_type": "BasicScheduler",
                   "inputs": {"model": model, "scheduler": scheduler, "steps": steps, "denoise": 1.0}}
        p[SAMPLER] = {"class_type": "SamplerCustom", "inputs": {
            **common, "add_noise": True, "noise_seed": seed, "cfg": cfg, "sampler": ["11", 0], "sigmas": ["12", 0]}}
    else:
        raise ValueError(f"unknown sampler node {sampler!r}")
    if output == "webp":
        p[VAE] = {"class_type": "VAELoader", "inputs": {"vae_name": vae}}
        p[DECODE] = {"class_type": "VAEDecode", "inputs": {"samples": [SAMPLER, 0], "vae": [VAE, 0]}}
        p[OUTPUT] = {"class_type": "SaveAnimatedWEBP", "inputs": {
            "images": [DECODE, 0], "filename_prefix": prefix, "fps": 8.0, "lossless": False, "quality": 80,
            "method": "default"}}
    else:
        p[OUTPUT] = {"class_type": "SaveLatent", "inputs": {"samples": [SAMPLER, 0], "filename_prefix": prefix}}
    return p
