"""State dicts: read weight files safely into diffusers names, compare them with a model, assign them into it.

The model is built on the ``meta`` device and the file's tensors are assigned into it, so the weights exist once in
memory (memory-mapped for zip ``.pth`` files, read straight into tensors for safetensors).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from ..errors import StateDictMismatchError
from .layouts import ORIGINAL, check_is_unet3d, original_to_diffusers, strip_prefix, unwrap
from .safe_io import cast_floating, read_weight_file

SHOW_KEYS = 8  # how many offending keys an error message lists


@dataclass
class CheckpointInfo:
    """What was found in the file(s), for messages and tests."""
    source: str
    layout: str
    prefix: Optional[str]
    dtypes: Tuple[str, ...]


def read_unet3d_state_dict(paths: Iterable[Path], torch_dtype: Optional[torch.dtype] = None,
                           source: Optional[str] = None) -> Tuple[Dict[str, torch.Tensor], CheckpointInfo]:
    """Read one file or the shards of one model, returning a diffusers-named state dict.

    Raises the CheckpointError family: unsafe pickle, corrupt file, another model family, unknown layout.
    """
    paths = [Path(p) for p in paths]
    source = source or (str(paths[0]) if len(paths) == 1 else f"{paths[0].parent} ({len(paths)} shards)")
    merged: Dict[str, torch.Tensor] = {}
    for path in paths:
        merged.update(unwrap(read_weight_file(path), str(path)))
    sd, prefix = strip_prefix(merged)
    layout = check_is_unet3d(sd, source)
    if layout == ORIGINAL:
        sd = original_to_diffusers(sd, source)
    cast_floating(sd, torch_dtype)
    dtypes = tuple(sorted({str(t.dtype).replace("torch.", "") for t in sd.values()}))
    return sd, CheckpointInfo(source=source, layout=layout, prefix=prefix, dtypes=dtypes)


def _fmt(shape: Iterable[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def mismatch_report(expected: Mapping[str, Tuple[int, ...]], found: Mapping[str, torch.Tensor]) -> Optional[str]:
    """A readable list of missing / unexpected / wrong-shape keys, or None if names and shapes all match."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return None
    lines: List[str] = []
    if missing:
        lines.append(f"  {len(missing)} missing keys (the model needs them, the file lacks them):")
        lines += [f"    {k} {_fmt(expected[k])}" for k in missing[:SHOW_KEYS]]
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys (in the file, not in the model):")
        lines += [f"    {k} {_fmt(found[k].shape)}" for k in unexpected[:SHOW_KEYS]]
    if wrong:
        lines.append(f"  {len(wrong)} shape mismatches (file vs model):")
        lines += [f"    {k}: {_fmt(found[k].shape)} vs {_fmt(expected[k])}" for k in wrong[:SHOW_KEYS]]
    return "\n".join(lines)


def assign_state_dict(model: torch.nn.Module, sd: Dict[str, torch.Tensor], source: str,
                      config_origin: str = "the config") -> torch.nn.Module:
    """Check names and shapes, then move the tensors into a (meta-built) model without copying them."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = mismatch_report(expected, sd)
    if report:
        raise StateDictMismatchError(
            f"{source} does not match the UNet3D built from {config_origin}:\n{report}\n"
            f"If the config was inferred, pass config= with the model's config.json; if you passed one, it does not "
            f"describe this file.")
    model.load_state_dict(sd, strict=True, assign=True)
    leftover = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:  # buffers that are not in the state dict would stay on meta; fail loudly rather than at forward
        raise StateDictMismatchError(f"{source}: after loading, {len(leftover)} tensors were never filled "
                                     f"(first: {', '.join(leftover[:SHOW_KEYS])}).")
    return model.eval()


def build_on_meta(cls: Any, config: Mapping[str, Any], **kwargs: Any) -> torch.nn.Module:
    """Instantiate ``cls(**config, **kwargs)`` without allocating weights."""
    try:
        return cls(**config, **kwargs, device="meta")
    except TypeError as exc:
        if "device" not in str(exc):
            raise
        with torch.device("meta"):  # classes without a device argument (diffusers, in tests)
            return cls(**config)
