"""The one loading path, for the Python API and a host's loader alike, and ``save_pretrained``.

1. ``read_checkpoint``: an explicit config is validated first (nothing is allocated for a bad one), the weight file(s)
   are read safely and renamed to diffusers names, and the config is inferred from the shapes when none was given.
2. ``build_model``: the model is built on the ``meta`` device (with the caller's ``operations`` namespace, e.g. a
   host's casting layers), names and shapes are checked, and the file's tensors (cast one at a time to the asked
   dtype) are assigned into it: the weights exist once in memory, never twice.

The model class is passed in (``cls``), so this module does not import the model.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..errors import CheckpointError, CheckpointNotFoundError, ConfigError, UnsupportedOptionError
from ..network.config import UNet3DConfig
from ..network.limits import check_size
from .config_inference import infer_config
from .folders import (
    CONFIG_NAME,
    check_class,
    find_weight_files,
    original_release_file,
    read_json,
    resolve_model_folder,
)
from .safe_io import cast_floating, usable_path
from .sharding import DEFAULT_MAX_SHARD_SIZE, check_save_folder, parse_shard_size, write_weights
from .state_dict import CheckpointInfo, assign_state_dict, build_on_meta, read_unet3d_state_dict

log = logging.getLogger("unet3d")
PathLike = Union[str, Path]
ConfigSource = Union[Mapping[str, Any], PathLike]
_WRITER_VERSION = "0.42.1"  # diffusers release whose config.json schema we write; diffusers reads it back unchanged


@dataclass
class Checkpoint:
    """A read checkpoint: diffusers-named tensors and the validated config they belong to."""
    state_dict: Dict[str, torch.Tensor]
    config: UNet3DConfig
    info: CheckpointInfo
    config_origin: str          # where the config came from, for messages

    @property
    def parameters(self) -> int:
        return sum(t.numel() for t in self.state_dict.values())


def validated_config(raw: Mapping[str, Any], where: str, inferred: bool = False) -> UNet3DConfig:
    """A UNet3DConfig from a config mapping; CheckpointError naming ``where`` when it is not valid."""
    try:
        config, ignored = UNet3DConfig.from_dict(raw)
        check_size(config)
    except (ConfigError, ValueError, TypeError) as exc:
        if inferred:
            raise CheckpointError(f"the config inferred from the tensor shapes of {where} is not valid ({exc}). The "
                                  f"file may be damaged or use an unusual architecture; pass config= (a config.json "
                                  f"path or dict) describing it.") from exc
        raise CheckpointError(f"{where} is not a valid UNet3D config: {exc}") from exc
    extra = [k for k in ignored if not k.startswith("_")]
    if extra:
        log.info("Ignoring config keys UNet3DConditionModel does not take (from %s): %s", where, ", ".join(extra))
    return config


def explicit_config(config: ConfigSource) -> Tuple[Dict[str, Any], str]:
    """(raw config mapping, where it came from) for a dict, a config.json path, or a model / pipeline folder."""
    if isinstance(config, Mapping):
        return dict(config), "the given config"
    path = usable_path(config, "config path")
    if path.is_dir():  # a model folder, or a pipeline root whose unet/ holds the config
        nested = path / "unet" / CONFIG_NAME
        path = nested if not (path / CONFIG_NAME).exists() and nested.exists() else path / CONFIG_NAME
    if not path.is_file():
        raise CheckpointNotFoundError(f"Config not found: {path} does not exist.")
    raw = read_json(path)
    check_class(raw, path)
    return raw, str(path)


def checked_config(config: ConfigSource, attention_head_dim: Optional[int] = None) -> Tuple[UNet3DConfig, str]:
    """(validated config, where it came from) for a dict, a config.json path, or a model / pipeline folder."""
    raw, origin = explicit_config(config)
    if attention_head_dim is not None:
        raw["attention_head_dim"] = attention_head_dim
    return validated_config(raw, origin), origin


def read_checkpoint(files: Sequence[PathLike], config: Optional[ConfigSource] = None,
                    attention_head_dim: Optional[int] = None, source: Optional[str] = None) -> Checkpoint:
    """Read one weight file (or the shards of one model) with its config: given (checked before any weight is
    read) or inferred from the tensor shapes."""
    known = None
    if config is not None:
        known, origin = checked_config(config, attention_head_dim)
    sd, info = read_unet3d_state_dict([Path(f) for f in files], source=source)
    if known is None:
        raw = infer_config(sd, info.source, attention_head_dim)
        known, origin = validated_config(raw, info.source, inferred=True), "a config inferred from the tensor shapes"
    return Checkpoint(sd, known, info, origin)


def build_model(cls: Any, checkpoint: Checkpoint, torch_dtype: Optional[torch.dtype] = None, device=None,
                **build_kwargs: Any) -> torch.nn.Module:
    """``cls(**config, **build_kwargs)`` on ``meta`` with the checkpoint's tensors assigned (cast to
    ``torch_dtype`` one at a time, then moved to ``device``). ``build_kwargs``: e.g. a host's ``operations``."""
    model = build_on_meta(cls, checkpoint.config, **build_kwargs)
    cast_floating(checkpoint.state_dict, torch_dtype)
    model = assign_state_dict(model, checkpoint.state_dict, checkpoint.info.source, checkpoint.config_origin)
    return model if device is None else model.to(device)


def load_pretrained(cls: Any, path: PathLike, subfolder: Optional[str] = None,
                    torch_dtype: Optional[torch.dtype] = None, variant: Optional[str] = None,
                    device=None, use_safetensors: Optional[bool] = None,
                    config_overrides: Optional[Mapping[str, Any]] = None) -> torch.nn.Module:
    """Load a diffusers-format UNet3D folder (or a pipeline root whose unet/ is used). A ModelScope / Zeroscope
    release folder (``text2video_pytorch_model.pth`` and no config.json) is loaded as a single file.

    ``use_safetensors``: as in diffusers (True: safetensors only; False: pickles only; None: either).
    ``config_overrides``: config.json entries to replace (diffusers' ``from_pretrained(..., in_channels=8)``)."""
    usable_path(Path(path) / subfolder if subfolder else path, "model folder")
    original = original_release_file(path, subfolder)
    if original is not None:
        if variant:
            raise CheckpointNotFoundError(f"{original.parent} is a ModelScope-layout folder; it has no {variant!r} "
                                          f"variant. Pass variant=None.")
        log.info("%s has no config.json; loading its ModelScope checkpoint %s", original.parent, original.name)
        return load_single_file(cls, original, config=_overridden(None, config_overrides), torch_dtype=torch_dtype,
                                device=device)
    folder = resolve_model_folder(path, subfolder)
    raw, origin = explicit_config(folder / CONFIG_NAME)
    if raw.get("quantization_config") is not None:
        raise UnsupportedOptionError(f"{origin} describes a quantised model (quantization_config); quantisation "
                                     f"back-ends are out of scope of unet3d. Load the unquantised weights, or use "
                                     f"diffusers with its quantizer for this folder.")
    config = _overridden(raw, config_overrides)
    validated_config(config, origin)  # a wrong or broken config is named before weights are looked for
    files = find_weight_files(folder, variant, use_safetensors)
    checkpoint = read_checkpoint(files, config, source=str(files[0] if len(files) == 1 else folder))
    checkpoint.config_origin = origin if config is raw else f"{origin} with {sorted(config_overrides)} replaced"
    return build_model(cls, checkpoint, torch_dtype, device)


def _overridden(raw: Optional[Dict[str, Any]], overrides: Optional[Mapping[str, Any]]):
    if not overrides:
        return raw
    if raw is None:
        raise UnsupportedOptionError(f"config overrides {sorted(overrides)} need a config.json; this folder holds "
                                     f"a ModelScope checkpoint whose config is inferred. Pass a config to "
                                     f"from_single_file instead.")
    return {**raw, **overrides}


def load_single_file(cls: Any, path: PathLike, config: Optional[ConfigSource] = None,
                     torch_dtype: Optional[torch.dtype] = None, attention_head_dim: Optional[int] = None,
                     device=None) -> torch.nn.Module:
    """Load one checkpoint file in diffusers or original ModelScope layout; infer the config if none is given."""
    usable_path(path, "checkpoint")
    checkpoint = read_checkpoint([path], config, attention_head_dim)
    return build_model(cls, checkpoint, torch_dtype, device)


def config_as_json(model: torch.nn.Module) -> Dict[str, Any]:
    """The diffusers config.json content for ``model`` (ours or a diffusers one)."""
    config = model.config
    if not isinstance(config, UNet3DConfig):
        config, _ = UNet3DConfig.from_dict(dict(config))
    data = config.to_json_dict()
    data["_diffusers_version"] = _WRITER_VERSION
    return data


def save_pretrained(model: torch.nn.Module, folder: PathLike, variant: Optional[str] = None,
                    safe_serialization: bool = True, max_shard_size: Union[int, str] = DEFAULT_MAX_SHARD_SIZE,
                    is_main_process: bool = True) -> Path:
    """Write ``config.json`` and the weights in diffusers' layout: ``diffusion_pytorch_model[.variant].safetensors``
    (``.bin`` with ``safe_serialization=False``), or shards and an index above ``max_shard_size`` (see
    ``unet3d.checkpoints.sharding``). Returns the weight file, or the index. As in diffusers, a process that is not
    the main one writes the weights only (no config, no clean-up)."""
    folder = Path(folder)
    check_save_folder(folder)
    parse_shard_size(max_shard_size)  # a bad size is reported before anything is written
    state_dict = model.state_dict()
    on_meta = [k for k, t in state_dict.items() if t.is_meta]
    if on_meta:
        raise CheckpointError(f"cannot save: {len(on_meta)} tensors have no data (meta), e.g. {on_meta[0]}")
    folder.mkdir(parents=True, exist_ok=True)
    if is_main_process:
        (folder / CONFIG_NAME).write_text(json.dumps(config_as_json(model), indent=2, sort_keys=True) + "\n")
    return write_weights(state_dict, folder, variant, safe_serialization, max_shard_size, clean=is_main_process)
