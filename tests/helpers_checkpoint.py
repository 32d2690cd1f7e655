"""Helpers for the checkpoint tests: tiny diffusers reference models, inputs, and an independent diffusers ->
original-ModelScope converter (written from the original UNetSD module numbering, separately from
unet3d/checkpoints/layouts.py, and checked against the real-layout fixture in test_checkpoint_layouts.py)."""
from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path
from typing import Dict

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # checked-in data (fixtures/modelscope/README.md)

# 3 levels, 2 layers, attention on levels 0-1 only: exercises part-1 and part-3 upsamplers and the op strides.
TINY = dict(
    sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=32,
    cross_attention_dim=24, attention_head_dim=8,
)
# 2 levels, 1 layer, different in/out channels and head size.
TINY_ODD = dict(
    in_channels=5, out_channels=3, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), block_out_channels=(32, 64), layers_per_block=1,
    norm_num_groups=32, cross_attention_dim=16, attention_head_dim=16,
)
# With a time-cond projection (diffusers layout only: the original ModelScope UNet has none).
TINY_TIMECOND = dict(TINY_ODD, time_cond_proj_dim=12)


@contextlib.contextmanager
def one_thread():
    """Tiny models on a shared 2-core box: one intra-op thread is ~20x faster than two threads fighting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def single_thread():
    with one_thread():
        yield


@functools.lru_cache(maxsize=None)
def _reference(key: str):
    config = {"tiny": TINY, "odd": TINY_ODD, "timecond": TINY_TIMECOND}[key]
    with one_thread():
        model = diffusers_model(config)
        inputs = inputs_for(config)
        return config, model, inputs, forward(model, inputs)


def reference(key: str):
    """(config, diffusers model, inputs, diffusers output) for TINY ('tiny'), TINY_ODD ('odd') or TINY_TIMECOND
    ('timecond'), built once per test session. Treat the model as read-only."""
    return _reference(key)


def diffusers_model(config: dict, seed: int = 0):
    """A diffusers UNet3DConditionModel with every tensor random (zero-initialised ones too), eval mode, fp32."""
    from diffusers import UNet3DConditionModel

    torch.manual_seed(seed)
    model = UNet3DConditionModel(**config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.2 if "norm" in name else 0.08
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=gen))
    return model.eval()


def inputs_for(config: dict, seed: int = 3, frames: int = 3, size: int = 8) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {
        "sample": torch.randn(2, config.get("in_channels", 4), frames, size, size, generator=gen),
        "timestep": torch.tensor([10, 700]),
        "encoder_hidden_states": torch.randn(2, 5, config.get("cross_attention_dim", 1024), generator=gen),
    }
    if config.get("time_cond_proj_dim"):
        out["timestep_cond"] = torch.randn(2, config["time_cond_proj_dim"], generator=gen)
    return out


@torch.no_grad()
def forward(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).sample.float()


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


# ---- diffusers -> original ModelScope layout (the inverse renaming) -----------------------------------------------

_RESNET_BACK = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _resnet_back(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET_BACK[head]}.{tail}"


def _sub_module(kind: str, rest: str) -> str:
    """Original key suffix (part index + inner name) for a diffusers block child."""
    return {"resnets": lambda r: "0." + _resnet_back(r), "temp_convs": lambda r: "0.temopral_conv." + r,
            "attentions": lambda r: "1." + r, "temp_attentions": lambda r: "2." + r}[kind](rest)


def diffusers_to_original(sd: Dict[str, torch.Tensor], config: dict) -> Dict[str, torch.Tensor]:
    """Rename a diffusers UNet3D state dict to ModelScope's ``UNetSD`` names; temporal transformer projections get
    their Conv1d shape back (``unsqueeze(-1)``)."""
    n = config.get("layers_per_block", 2)
    up_types = config["up_block_types"]
    out: Dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
                 "conv_in.": "input_blocks.0.0.", "transformer_in.": "input_blocks.0.1.",
                 "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
        new = next((v + key[len(k):] for k, v in fixed.items() if key.startswith(k)), None)
        if new is None and (m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key)):
            new = f"input_blocks.{(n + 1) * (int(m[1]) + 1)}.op.{m[2]}"
        elif new is None and (m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key)):
            i = int(m[1])
            part = 3 if up_types[i].startswith("CrossAttn") else 1
            new = f"output_blocks.{(n + 1) * i + n}.{part}.conv.{m[2]}"
        elif new is None and (m := re.match(r"down_blocks\.(\d+)\.(\w+)\.(\d+)\.(.*)", key)):
            new = f"input_blocks.{1 + (n + 1) * int(m[1]) + int(m[3])}.{_sub_module(m[2], m[4])}"
        elif new is None and (m := re.match(r"up_blocks\.(\d+)\.(\w+)\.(\d+)\.(.*)", key)):
            new = f"output_blocks.{(n + 1) * int(m[1]) + int(m[3])}.{_sub_module(m[2], m[4])}"
        elif new is None and (m := re.match(r"mid_block\.(\w+)\.(\d+)\.(.*)", key)):
            kind, j, rest = m[1], int(m[2]), m[3]
            part = 3 * j if kind in ("resnets", "temp_convs") else {"attentions": 1, "temp_attentions": 2}[kind]
            new = f"middle_block.{part}." + _sub_module(kind, rest).split(".", 1)[1]
        if new is None:
            raise KeyError(f"no original name for {key}")
        temporal = key.startswith("transformer_in.") or ".temp_attentions." in key
        if temporal and key.endswith(("proj_in.weight", "proj_out.weight")):
            t = t.unsqueeze(-1)
        out[new] = t
    return out


def count_temporal_transformers(sd: Dict[str, torch.Tensor]) -> int:
    return len({k.rsplit(".proj_in.", 1)[0] for k in sd
                if k.endswith("proj_in.weight") and (k.startswith("transformer_in.") or ".temp_attentions." in k)})
