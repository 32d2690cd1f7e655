"""Exact parameter count of a UNet3DConditionModel from its config alone (no tensors), for memory estimates and
checkpoint summaries."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from . import config as cfgmod


def _linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def _transformer_params(heads: int, head_dim: int, channels: int, kv_dim: Optional[int]) -> int:
    inner = heads * head_dim
    kv = kv_dim or inner
    attn1 = 3 * inner * inner + _linear(inner, inner)
    attn2 = inner * inner + 2 * kv * inner + _linear(inner, inner)
    ff = _linear(inner, 8 * inner) + _linear(4 * inner, inner)
    return 2 * channels + _linear(channels, inner) + 6 * inner + attn1 + attn2 + ff + _linear(inner, channels)


def _resnet_params(cin: int, cout: int, temb: int) -> int:
    shortcut = _linear(cin, cout) if cin != cout else 0
    return 2 * cin + cin * cout * 9 + cout + _linear(temb, cout) + 2 * cout + cout * cout * 9 + cout + shortcut


def _tconv_params(c: int) -> int:
    return 4 * (2 * c + c * c * 3 + c)


def count_parameters(config: Mapping[str, Any]) -> int:
    """Exact parameter count of ``UNet3DConditionModel(**config)``."""
    cfg = cfgmod.normalize(**{k: v for k, v in config.items() if k in cfgmod.DEFAULTS})
    widths, layers = cfg["block_out_channels"], cfg["layers_per_block"]
    c0, temb, cross = widths[0], widths[0] * 4, cfg["cross_attention_dim"]
    geometry = cfgmod.level_attention_geometry(cfg)
    total = cfg["in_channels"] * c0 * 9 + c0 + _linear(c0, temb) + _linear(temb, temb)
    if cfg["time_cond_proj_dim"]:
        total += cfg["time_cond_proj_dim"] * c0
    total += _transformer_params(*cfgmod.transformer_in_geometry(cfg), c0, None)

    def layer(cin, c, level, attention):
        n = _resnet_params(cin, c, temb) + _tconv_params(c)
        if attention:
            heads, dim = geometry[level]
            n += _transformer_params(heads, dim, c, cross) + _transformer_params(heads, dim, c, None)
        return n
    for i, kind in enumerate(cfg["down_block_types"]):
        cin = widths[i - 1] if i else c0
        for j in range(layers):
            total += layer(cin if j == 0 else widths[i], widths[i], i, kind.startswith("CrossAttn"))
        if i < len(widths) - 1:
            total += widths[i] * widths[i] * 9 + widths[i]
    c = widths[-1]
    total += 2 * (_resnet_params(c, c, temb) + _tconv_params(c))
    total += _transformer_params(*geometry[-1], c, cross) + _transformer_params(*geometry[-1], c, None)
    rev = list(reversed(widths))
    for i, kind in enumerate(cfg["up_block_types"]):
        prev, out, skip_in = (rev[i - 1] if i else rev[0]), rev[i], rev[min(i + 1, len(widths) - 1)]
        for j in range(layers + 1):
            cin = (prev if j == 0 else out) + (skip_in if j == layers else out)
            total += layer(cin, out, len(widths) - 1 - i, kind.startswith("CrossAttn"))
        if i < len(widths) - 1:
            total += out * out * 9 + out
    if cfg["norm_num_groups"] is not None:
        total += 2 * c0
    return total + c0 * cfg["out_channels"] * 9 + cfg["out_channels"]
