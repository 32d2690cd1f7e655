"""Builds twin models: diffusers' UNet3DConditionModel (the oracle) and ours, with the same random weights."""
from __future__ import annotations

import torch

import unet3d

TINY = dict(block_out_channels=(32, 64), norm_num_groups=8, layers_per_block=1, cross_attention_dim=16,
            attention_head_dim=8, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.15) -> torch.nn.Module:
    """Every tensor random (also those initialised to zero), so a wrong wiring cannot hide behind an identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".norm" in name and name.endswith("weight"):
                p.copy_(1 + std * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model


def twins(seed: int = 0, **config):
    from diffusers import UNet3DConditionModel as Reference

    torch.manual_seed(seed)
    reference = randomize_(Reference(**config), seed).eval()
    ours = unet3d.UNet3DConditionModel(**config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def inputs(batch=2, frames=3, height=16, width=16, channels=4, tokens=5, dim=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, channels, frames, height, width, generator=gen)
    context = torch.randn(batch, tokens, dim, generator=gen)
    return sample, context


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
