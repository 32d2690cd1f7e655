"""Infer a UNet3DConditionModel config from the tensor shapes of a diffusers-named state dict.

What the shapes determine: in/out channels, block widths, layers per block, which levels have attention (down/up
block types), cross-attention width, time-cond width, and the head size: ``transformer_in`` always has 8 heads,
so its inner width is 8 x head size. What they cannot show (norm group count, eps, activation, padding, mid-block
scale) stays at the diffusers defaults, which every published ModelScope / Zeroscope model uses.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

import torch

from ..errors import CheckpointError

TRANSFORMER_IN_HEADS = 8  # fixed by the architecture (diffusers and the original UNetSD)
DEFAULT_HEAD_DIM = 64


def _shape(sd: Mapping[str, torch.Tensor], key: str, source: str):
    if key not in sd:
        raise CheckpointError(f"{source}: cannot infer the UNet3D config, `{key}` is missing. Pass config= (a "
                              f"config.json path or dict) to load it.")
    return tuple(sd[key].shape)


def _indices(sd: Mapping[str, Any], pattern: str) -> list:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd for m in [rx.match(k)] if m})


def infer_config(sd: Mapping[str, torch.Tensor], source: str = "checkpoint",
                 attention_head_dim: Optional[int] = None) -> Dict[str, Any]:
    """The constructor arguments that rebuild the model stored in ``sd`` (diffusers names).

    ``attention_head_dim`` overrides the head size read from ``transformer_in`` (falls back to 64 if that is absent).
    """
    try:
        return _infer(sd, source, attention_head_dim)
    except IndexError:  # a tensor with fewer dimensions than its name implies
        ranks = {k: tuple(v.shape) for k, v in sd.items() if k.endswith(".weight") and v.ndim < 2}
        raise CheckpointError(f"{source}: cannot infer the UNet3D config, some weights have fewer dimensions than a "
                              f"UNet3D layer of that name (e.g. {dict(list(ranks.items())[:3])}). The file is damaged "
                              f"or describes another model; pass config= if it is a UNet3D.") from None


def _infer(sd: Mapping[str, torch.Tensor], source: str, attention_head_dim: Optional[int]) -> Dict[str, Any]:
    conv_in = _shape(sd, "conv_in.weight", source)
    levels = _indices(sd, r"down_blocks\.(\d+)\.")
    if not levels or levels != list(range(len(levels))):
        raise CheckpointError(f"{source}: cannot infer the UNet3D config, down_blocks indices are {levels}.")
    widths = [_shape(sd, f"down_blocks.{i}.resnets.0.conv1.weight", source)[0] for i in levels]
    layers = _indices(sd, r"down_blocks\.0\.resnets\.(\d+)\.")
    down_types = ["CrossAttnDownBlock3D" if any(k.startswith(f"down_blocks.{i}.attentions.") for k in sd)
                  else "DownBlock3D" for i in levels]
    up_types = ["CrossAttnUpBlock3D" if any(k.startswith(f"up_blocks.{i}.attentions.") for k in sd)
                else "UpBlock3D" for i in levels]
    cross = [tuple(v.shape)[1] for k, v in sd.items()
             if re.match(r"(down_blocks\.\d+\.|up_blocks\.\d+\.|mid_block\.)attentions\.", k)
             and k.endswith("attn2.to_k.weight")]
    cond = sd.get("time_embedding.cond_proj.weight")
    head_dim = attention_head_dim
    if head_dim is None:
        inner = sd.get("transformer_in.proj_in.weight")
        head_dim = (inner.shape[0] // TRANSFORMER_IN_HEADS
                    if inner is not None and inner.shape[0] % TRANSFORMER_IN_HEADS == 0 else DEFAULT_HEAD_DIM)
    return {
        # not visible in the weights and unused by the model; 32 (x8 VAE = 256 px) is what every published
        # ModelScope / Zeroscope config says, and diffusers pipelines need a number here for their default size
        "sample_size": 32,
        "in_channels": conv_in[1],
        "out_channels": _shape(sd, "conv_out.weight", source)[0],
        "down_block_types": down_types,
        "up_block_types": up_types,
        "block_out_channels": widths,
        "layers_per_block": len(layers),
        "cross_attention_dim": cross[0] if cross else 1024,
        "attention_head_dim": int(head_dim),
        "time_cond_proj_dim": None if cond is None else tuple(cond.shape)[1],
    }
