"""Writing a state dict as diffusers does: one weight file, or shards plus an index when it exceeds ``max_shard_size``.

Naming and splitting follow diffusers' ``save_pretrained`` (through huggingface_hub's splitter), so a folder written
here is laid out file for file like one diffusers writes from the same weights:

- shards ``diffusion_pytorch_model[.variant]-00001-of-00003.safetensors`` (``.bin`` for pickles), tensors taken in
  state-dict order, a new shard started when the next tensor would overflow the limit, a tensor larger than the limit
  alone in its shard;
- index ``diffusion_pytorch_model.safetensors.index[.variant].json``: ``{"metadata": {"total_size": bytes},
  "weight_map": {tensor name: shard file}}``;
- ``max_shard_size``: bytes as an int, or a string of digits and a decimal unit (``"5GB"``, ``"300KB"``, ``"1.5MB"``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..errors import CheckpointError, ConfigError
from .folders import WEIGHTS_NAME, with_variant
from .safe_io import write_safetensors

DEFAULT_MAX_SHARD_SIZE = "10GB"  # diffusers' default
_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}")


def parse_shard_size(value: Union[int, str]) -> int:
    """Bytes for ``max_shard_size`` (an int, or ``"<number><KB|MB|GB|TB>"`` with decimal units)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"max_shard_size must be a number of bytes or a string such as '5GB', got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        text = value.strip()
        unit = text[-2:].upper()
        try:
            size = int(float(text[:-2].strip()) * _UNITS[unit])
        except (KeyError, ValueError, OverflowError):
            raise ConfigError(f"max_shard_size={value!r} is not a size: use digits and a unit among "
                              f"{', '.join(_UNITS)} (e.g. '5GB'), or an int of bytes") from None
    if size < 1:
        raise ConfigError(f"max_shard_size={value!r} must be a positive size")
    return size


def weight_file_names(safe_serialization: bool, variant: Optional[str]) -> Tuple[str, str]:
    """(single-file name, index name) of the weights, e.g. ``diffusion_pytorch_model.fp16.safetensors`` and
    ``diffusion_pytorch_model.safetensors.index.fp16.json``."""
    ext = "safetensors" if safe_serialization else "bin"
    return with_variant(f"{WEIGHTS_NAME}.{ext}", variant), with_variant(f"{WEIGHTS_NAME}.{ext}.index.json", variant)


def plan_shards(state_dict: Mapping[str, torch.Tensor], max_bytes: int, single_name: str) -> Dict[str, List[str]]:
    """``{file name: tensor names}``, in order; a single entry named ``single_name`` when everything fits."""
    shards: List[List[str]] = []
    current: List[str] = []
    current_bytes = 0
    for key, tensor in state_dict.items():
        size = tensor.numel() * tensor.element_size()
        if size > max_bytes:
            shards.append([key])
            continue
        if current and current_bytes + size > max_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(key)
        current_bytes += size
    if current or not shards:
        shards.append(current)
    if len(shards) == 1:
        return {single_name: shards[0]}
    stem, _, ext = single_name.rpartition(".")
    return {f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}": keys for i, keys in enumerate(shards)}


def _remove_stale(folder: Path, single_name: str, index_name: str, keep: Mapping[str, List[str]]) -> None:
    """Remove what a previous save of the same weights (same format and variant) left behind: old shards, and the
    index or the single file this save replaces, so the folder holds one copy. Other files and variants stay."""
    stem, _, ext = single_name.rpartition(".")
    for path in folder.iterdir():
        name = path.name
        if name in keep or not path.is_file():
            continue
        is_old_shard = (name.startswith(stem) and name.endswith(f".{ext}")
                        and _SHARD_SUFFIX.fullmatch(name[len(stem):-len(ext) - 1]) is not None)
        replaced = name == (index_name if len(keep) == 1 else single_name)
        if is_old_shard or replaced:
            path.unlink()


def write_weights(state_dict: Mapping[str, torch.Tensor], folder: Path, variant: Optional[str] = None,
                  safe_serialization: bool = True, max_shard_size: Union[int, str] = DEFAULT_MAX_SHARD_SIZE,
                  clean: bool = True) -> Path:
    """Write the weights into ``folder`` (sharded if needed); returns the weight file, or the index for shards."""
    single_name, index_name = weight_file_names(safe_serialization, variant)
    plan = plan_shards(state_dict, parse_shard_size(max_shard_size), single_name)
    if clean:
        _remove_stale(folder, single_name, index_name, plan)
    for name, keys in plan.items():
        part = {key: state_dict[key] for key in keys}
        if safe_serialization:
            write_safetensors(part, folder / name)
        else:
            torch.save({key: t.detach().cpu().contiguous() for key, t in part.items()}, folder / name)
    if len(plan) == 1:
        return folder / single_name
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state_dict.values())},
             "weight_map": {key: name for name, keys in plan.items() for key in keys}}
    path = folder / index_name
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def check_save_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"cannot save into {folder}: it is a file; save_pretrained takes a folder path")
