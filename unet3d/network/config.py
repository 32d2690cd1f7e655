"""The model configuration: the diffusers ``config.json`` schema of UNet3DConditionModel, with validation.

Every constructor argument of the model is one field here, with the same name and default as diffusers. Validation
raises ``ConfigError`` (a ``ValueError``) naming the parameter and the offending values, so a bad config.json is easy
to fix.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import ConfigError, ReadOnlyError
from .activations import ACTIVATIONS

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock3D", "UpBlock3D")

DEFAULTS: Dict[str, Any] = {
    "sample_size": None,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1024,
    "attention_head_dim": 64,
    "num_attention_heads": None,
    "time_cond_proj_dim": None,
}

# Inner GroupNorms need a group count even when norm_num_groups=None (which only drops the output norm).
FALLBACK_GROUPS = 32


class UNet3DConfig(dict):
    """A frozen dict of the constructor arguments, also readable as attributes (``config.block_out_channels``).

    Beyond the 16 fields it may carry bookkeeping entries diffusers keeps in a model's config (``_name_or_path``,
    or keys added with ``register_to_config``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"UNet3DConfig has no field {name!r}; fields: {sorted(self)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("UNet3DConfig is read-only; build a new model to change the architecture")

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise ReadOnlyError("UNet3DConfig is read-only; build a new model to change the architecture, or use "
                            "model.register_to_config(key=value) to record an entry")

    __setitem__ = __delitem__ = __ior__ = pop = popitem = setdefault = update = clear = _refuse

    def __reduce__(self):  # copies and pickles are built in one step, never item by item
        return type(self), (dict(self),)

    def merged(self, entries: Mapping[str, Any]) -> "UNet3DConfig":
        """A new config with ``entries`` set; model fields among them are normalised and validated again."""
        data = {**self, **entries}
        fields = normalize(**{k: v for k, v in data.items() if k in DEFAULTS})
        return type(self)({**fields, **{k: v for k, v in data.items() if k not in DEFAULTS}})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tuple["UNet3DConfig", List[str]]:
        """Config from a diffusers config.json mapping. Unknown keys (``_class_name``, old UNet2D-style keys) are
        returned, not fatal, since published configs carry them."""
        known = {k: v for k, v in data.items() if k in DEFAULTS}
        ignored = sorted(k for k in data if k not in DEFAULTS)
        return cls(normalize(**known)), ignored

    def to_json_dict(self) -> Dict[str, Any]:
        out = {"_class_name": "UNet3DConditionModel"}
        for key, value in self.items():
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


def normalize(**kwargs: Any) -> Dict[str, Any]:
    """Fill defaults, turn sequences into tuples, validate. Returns the 16 fields in signature order."""
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"UNet3DConditionModel got unexpected config keys {unknown}; valid keys: {list(DEFAULTS)}")
    cfg = dict(DEFAULTS)
    cfg.update(kwargs)
    for key in ("down_block_types", "up_block_types", "block_out_channels"):
        if not isinstance(cfg[key], (list, tuple)):
            _fail(key, cfg[key], "must be a list with one entry per level")
        cfg[key] = tuple(cfg[key])
    for key in ("attention_head_dim", "num_attention_heads"):
        if isinstance(cfg[key], (list, tuple)):
            cfg[key] = tuple(cfg[key])
    validate(cfg)
    return cfg


def _fail(param: str, value: Any, why: str) -> None:
    raise ConfigError(f"Invalid UNet3D config: `{param}`={value!r}: {why}")


def _per_level(cfg: Mapping[str, Any], key: str) -> Optional[Tuple[Any, ...]]:
    value = cfg[key]
    levels = len(cfg["block_out_channels"])
    if value is None:
        return None
    if isinstance(value, tuple):
        if len(value) != levels:
            _fail(key, value, f"needs one entry per level ({levels}, like `block_out_channels`), got {len(value)}")
        return value
    return (value,) * levels


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")


def validate(cfg: Mapping[str, Any]) -> None:
    down, up, widths = cfg["down_block_types"], cfg["up_block_types"], cfg["block_out_channels"]
    if not widths:
        _fail("block_out_channels", widths, "needs at least one level")
    if len(down) != len(widths):
        _fail("down_block_types", down, f"needs one entry per `block_out_channels` entry ({len(widths)})")
    if len(up) != len(down):
        _fail("up_block_types", up, f"needs as many entries as `down_block_types` ({len(down)})")
    for i, name in enumerate(down):
        if name not in DOWN_BLOCK_TYPES:
            _fail("down_block_types", down, f"entry {i} {name!r} is not one of {DOWN_BLOCK_TYPES}")
    for i, name in enumerate(up):
        if name not in UP_BLOCK_TYPES:
            _fail("up_block_types", up, f"entry {i} {name!r} is not one of {UP_BLOCK_TYPES}")
    for key in ("in_channels", "out_channels", "layers_per_block"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            _fail(key, cfg[key], "must be a positive integer")
    if any(not isinstance(w, int) or w < 1 for w in widths):
        _fail("block_out_channels", widths, "every width must be a positive integer")
    if not isinstance(cfg["downsample_padding"], int) or cfg["downsample_padding"] < 0:
        _fail("downsample_padding", cfg["downsample_padding"], "must be an integer >= 0")
    if not _positive_number(cfg["mid_block_scale_factor"]):
        _fail("mid_block_scale_factor", cfg["mid_block_scale_factor"], "must be > 0 (outputs are divided by it)")
    if not isinstance(cfg["act_fn"], str) or cfg["act_fn"] not in ACTIVATIONS:
        _fail("act_fn", cfg["act_fn"], f"must be one of {tuple(ACTIVATIONS)}")
    if not _positive_number(cfg["norm_eps"]):
        _fail("norm_eps", cfg["norm_eps"], "must be > 0")
    groups = inner_groups(cfg)
    if not isinstance(groups, int) or groups < 1:
        _fail("norm_num_groups", cfg["norm_num_groups"], "must be a positive integer or None")
    bad = [w for w in widths if w % groups]
    if bad:
        _fail("norm_num_groups", cfg["norm_num_groups"],
              f"every block width must be divisible by the group count {groups}; {bad} in block_out_channels "
              f"{widths} are not")
    has_cross = any(name.startswith("CrossAttn") for name in down + up)
    ca = cfg["cross_attention_dim"]
    if has_cross and (not isinstance(ca, int) or ca < 1):
        _fail("cross_attention_dim", ca, "cross-attention blocks need a positive text-embedding width")
    tc = cfg["time_cond_proj_dim"]
    if tc is not None and (not isinstance(tc, int) or tc < 1):
        _fail("time_cond_proj_dim", tc, "must be a positive integer or None")
    head_dims = _per_level(cfg, "attention_head_dim")
    if any(not isinstance(d, int) or d < 1 for d in head_dims):
        _fail("attention_head_dim", cfg["attention_head_dim"], "every head size must be a positive integer")
    heads = _per_level(cfg, "num_attention_heads")
    if heads is not None:
        for width, n in zip(widths, heads):
            if not isinstance(n, int) or n < 1 or width % n:
                _fail("num_attention_heads", cfg["num_attention_heads"],
                      f"each level's head count must be a positive divisor of its width; {n} does not divide {width}")
    else:
        for width, d in zip(widths, head_dims):
            if width < d:
                _fail("attention_head_dim", cfg["attention_head_dim"],
                      f"head size {d} is larger than the level width {width} (no head would fit)")


def inner_groups(cfg: Mapping[str, Any]) -> int:
    """Group count of the GroupNorms inside blocks."""
    groups = cfg["norm_num_groups"]
    return FALLBACK_GROUPS if groups is None else groups


def level_attention_geometry(cfg: Mapping[str, Any]) -> List[Tuple[int, int]]:
    """(heads, head size) of the transformers at each level.

    With ``num_attention_heads`` unset (every published model), ``attention_head_dim`` is the head size and
    heads = width // head size, exactly as diffusers computes it. With ``num_attention_heads`` set, it is the real
    number of heads and the head size is width // heads (diffusers documents this but raises).
    """
    widths = cfg["block_out_channels"]
    heads = _per_level(cfg, "num_attention_heads")
    if heads is not None:
        return [(n, w // n) for w, n in zip(widths, heads)]
    return [(w // d, d) for w, d in zip(widths, _per_level(cfg, "attention_head_dim"))]


def overall_up_factor(cfg: Mapping[str, Any]) -> int:
    """Every level but the last upsamples by 2: latent sides must be multiples of this, or exact sizes are passed."""
    return 2 ** (len(cfg["block_out_channels"]) - 1)


def transformer_in_geometry(cfg: Mapping[str, Any]) -> Tuple[int, int]:
    """The input temporal transformer always has 8 heads; its head size is the level-0 head size."""
    return 8, level_attention_geometry(cfg)[0][1]

