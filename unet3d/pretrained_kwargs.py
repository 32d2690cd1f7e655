"""The keyword arguments of diffusers' ``from_pretrained`` / ``save_pretrained``, sorted into what this package does
with each, so a script written for diffusers runs unchanged or is told plainly what is out of scope.

- Used: ``subfolder``, ``torch_dtype`` / ``dtype``, ``variant``, ``use_safetensors``, ``device_map`` naming one
  device, ``output_loading_info``; ``safe_serialization``, ``max_shard_size``, ``is_main_process``; and, as in
  diffusers, any config field (``from_pretrained(path, sample_size=64)`` replaces that config.json entry).
- Without effect here, accepted silently: ``low_cpu_mem_usage`` and ``disable_mmap`` (loading always builds the model
  without memory and assigns the file's tensors, one copy), and the download options, which mean nothing for a local
  folder.
- Out of scope, refused with ``UnsupportedOptionError``: a Hub model id, ``device_map`` spreading the model over
  devices, accelerate offloading, quantisation, parallel loading, FlashPack, ``ignore_mismatched_sizes=True``,
  ``push_to_hub=True``.
- Anything else is ignored with a warning (diffusers ignores unknown keywords silently).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

from . import dtypes
from .errors import CheckpointNotFoundError, UNet3DError, UnsupportedOptionError
from .network.config import DEFAULTS

log = logging.getLogger("unet3d")

_DOWNLOAD_OPTIONS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "mirror",
                     "local_dir", "local_dir_use_symlinks", "user_agent", "resume_download", "use_auth_token")
_NO_EFFECT = ("low_cpu_mem_usage", "disable_mmap", "flashpack_kwargs")
_OFFLOADING = ("max_memory", "offload_folder", "offload_state_dict")
_ACCELERATE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PUSH_OPTIONS = ("commit_message", "private", "create_pr", "token", "repo_id")


@dataclass
class LoadRequest:
    """What ``from_pretrained`` was asked for, in this package's terms."""
    subfolder: Optional[str] = None
    torch_dtype: Optional[torch.dtype] = None
    variant: Optional[str] = None
    device: Any = None
    use_safetensors: Optional[bool] = None
    output_loading_info: bool = False
    config_overrides: Dict[str, Any] = field(default_factory=dict)


def parse_load_kwargs(kwargs: Dict[str, Any]) -> LoadRequest:
    """Sort ``from_pretrained``'s keyword arguments (``kwargs`` is consumed)."""
    _refuse_if(kwargs.pop("quantization_config", None) is not None, "quantization_config",
               "quantisation back-ends are out of scope of unet3d; load the model unquantised (torch_dtype=torch."
               "float16 or torch.bfloat16 halves its memory)")
    _refuse_if(kwargs.pop("parallel_config", None) is not None, "parallel_config",
               "tensor / context parallelism is out of scope of unet3d; load on one device")
    _refuse_if(bool(kwargs.pop("use_flashpack", False)), "use_flashpack=True",
               "FlashPack files are out of scope of unet3d; use the safetensors weights")
    _refuse_if(bool(kwargs.pop("ignore_mismatched_sizes", False)), "ignore_mismatched_sizes=True",
               "re-initialising tensors that do not fit is out of scope of unet3d (its loader is strict); build the "
               "model with from_config and load_state_dict(..., strict=False) the tensors that fit")
    for key in _OFFLOADING:
        _refuse_if(kwargs.pop(key, None) is not None, key,
                   "accelerate's offloading is out of scope of unet3d; load on one device (device_map='cuda')")
    request = LoadRequest(subfolder=kwargs.pop("subfolder", None) or None, variant=kwargs.pop("variant", None),
                          output_loading_info=bool(kwargs.pop("output_loading_info", False)))
    dtype = kwargs.pop("dtype", None)
    request.torch_dtype = resolve_dtype(dtype if dtype is not None else kwargs.pop("torch_dtype", None))
    kwargs.pop("torch_dtype", None)
    device_map = kwargs.pop("device_map", None)
    request.device = kwargs.pop("device", None)
    if device_map is not None:
        mapped = single_device(device_map)
        if request.device is not None and torch.device(request.device) != mapped:
            raise UNet3DError(f"from_pretrained got device={request.device!r} and device_map={device_map!r}; "
                              f"pass one of them")
        request.device = mapped
    use_safetensors = kwargs.pop("use_safetensors", None)
    if use_safetensors not in (None, True, False):
        raise UNet3DError(f"use_safetensors must be True, False or None, got {use_safetensors!r}")
    request.use_safetensors = use_safetensors
    for key in _DOWNLOAD_OPTIONS + _NO_EFFECT:
        kwargs.pop(key, None)
    request.config_overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in DEFAULTS}
    _warn_unknown("from_pretrained", kwargs)
    return request


def parse_save_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Sort ``save_pretrained``'s keyword arguments (``kwargs`` is consumed) into ``loading.save_pretrained``'s."""
    _refuse_if(bool(kwargs.pop("push_to_hub", False)), "push_to_hub=True",
               "uploading to the Hugging Face Hub is out of scope of unet3d; save the folder, then upload it with "
               "`huggingface-cli upload <repo id> <folder>`")
    _refuse_if(bool(kwargs.pop("use_flashpack", False)), "use_flashpack=True",
               "FlashPack files are out of scope of unet3d; save safetensors (the default)")
    if kwargs.pop("save_function", None) is not None:  # diffusers does not call it either
        log.warning("save_pretrained ignores save_function (diffusers does not use it either); files are written "
                    "with safetensors or torch.save")
    chosen = {key: kwargs.pop(key) for key in ("variant", "safe_serialization", "max_shard_size", "is_main_process")
              if key in kwargs}
    for key in _PUSH_OPTIONS:  # only read by push_to_hub, which is refused above when set
        kwargs.pop(key, None)
    _warn_unknown("save_pretrained", kwargs)
    return chosen


def resolve_dtype(value: Any) -> Optional[torch.dtype]:
    """A floating torch dtype from a torch dtype or its name (``torch.float16``, ``"float16"``, ``"fp16"``)."""
    if value is None or isinstance(value, torch.dtype) and value.is_floating_point:
        return value
    try:
        entry = dtypes.by_name(dtypes.name_of(value))
    except ValueError:
        entry = None
    if entry is None or not entry.floating or entry.torch is None:
        raise UNet3DError(f"torch_dtype={value!r} is not a floating-point dtype; pass e.g. torch.float16, "
                          f"torch.bfloat16 or torch.float32 (or None to keep the file's dtype)")
    return entry.torch


def single_device(device_map: Any) -> torch.device:
    """The one device a ``device_map`` names; maps that spread the model over devices are refused."""
    if isinstance(device_map, Mapping):
        if set(device_map) != {""}:
            raise UnsupportedOptionError(
                f"device_map with per-module entries ({sorted(device_map)[:3]}...) needs accelerate's dispatch, "
                f"which is out of scope of unet3d; pass one device (device_map='cuda' or {{'': 'cuda:0'}}).")
        device_map = device_map[""]
    if isinstance(device_map, str) and device_map in _ACCELERATE_MAPS:
        raise UnsupportedOptionError(f"device_map={device_map!r} spreads the model over devices with accelerate, "
                                     f"which is out of scope of unet3d; pass one device, e.g. device_map='cuda'.")
    if isinstance(device_map, bool) or isinstance(device_map, int) and device_map < 0:
        raise UNet3DError(f"device_map={device_map!r} is not a device; pass e.g. 'cuda', 'cuda:1', 0 or 'cpu'")
    try:
        return torch.device(device_map)
    except (RuntimeError, TypeError, ValueError):
        raise UNet3DError(f"device_map={device_map!r} is not a device; pass e.g. 'cuda', 'cuda:1', 0 or "
                          f"'cpu'") from None


def check_local(path: Any, subfolder: Optional[str]) -> None:
    """A path that does not exist but reads like ``owner/name`` is a Hub model id: say that only folders load."""
    if path is None:
        raise UNet3DError("from_pretrained needs a model folder (a diffusers UNet folder or a pipeline folder)")
    text = str(path)
    if isinstance(path, str) and not Path(text).exists() and _HUB_ID.match(text):
        target = f" --include '{subfolder}/*'" if subfolder else ""
        raise CheckpointNotFoundError(
            f"{text!r} is not a local folder; it reads like a Hugging Face Hub model id. Downloading from the Hub is "
            f"out of scope of unet3d (it loads local folders only): download it first, e.g. `huggingface-cli "
            f"download {text}{target} --local-dir <folder>`, then pass that folder"
            f"{f' with subfolder={subfolder!r}' if subfolder else ''}.")


def _refuse_if(condition: bool, option: str, why: str) -> None:
    if condition:
        raise UnsupportedOptionError(f"{option}: {why}.")


def _warn_unknown(method: str, kwargs: Mapping[str, Any]) -> None:
    if kwargs:
        log.warning("%s ignores keyword arguments it does not know: %s", method, ", ".join(sorted(kwargs)))
