"""Upper bounds for configs read from files or requests, far above every published UNet3D (4 levels of at most 1280
channels, 2 layers per block, 1024-wide text), so that a damaged or hostile config.json cannot make a loader build,
or a memory estimate loop over, a model of absurd size. The Python constructor itself is not bounded."""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import ConfigError

MAX_LEVELS = 8
MAX_LAYERS_PER_BLOCK = 32
MAX_WIDTH = 32768        # channels of a level, of the latent in/out, of the text embedding, of the time-cond input


def check_size(cfg: Mapping[str, Any]) -> None:
    """ConfigError naming the field when a validated config is beyond the bounds above."""
    widths = cfg["block_out_channels"]
    checks = [("block_out_channels", len(widths), MAX_LEVELS, "levels"),
              ("layers_per_block", cfg["layers_per_block"], MAX_LAYERS_PER_BLOCK, "layers per block"),
              ("block_out_channels", max(widths), MAX_WIDTH, "channels in a level")]
    for key in ("in_channels", "out_channels", "cross_attention_dim", "time_cond_proj_dim"):
        if isinstance(cfg.get(key), int):
            checks.append((key, cfg[key], MAX_WIDTH, "channels"))
    for key, value, limit, what in checks:
        if value > limit:
            raise ConfigError(f"`{key}` asks for {value} {what}, more than any UNet3D this package loads "
                              f"(at most {limit}; published models have at most 4 levels, 2 layers per block and "
                              f"1280 channels). The config is damaged or describes another model.")
