"""A checkpoint's config and parameter count without loading its weights (for memory estimates).

* ``.safetensors``: the JSON header alone (names, shapes, dtypes; 8 bytes of length + the header), turned into meta
  tensors (no data) so the same layout detection, ModelScope -> diffusers renaming and config inference as loading
  apply (``layouts``, ``config_inference`` in this package).
* a diffusers folder (``config.json`` [+ weights]) or a pipeline folder with ``unet/``: the config.json; the storage
  dtype from a safetensors header when there is one, else from the ``.fp16`` variant name.
* pickle files (``.pth``/``.bin``/``.ckpt``) cannot be read without unpickling them: a file whose size matches the
  published ModelScope / Zeroscope UNet (1,411,233,860 parameters, fp16 or fp32) gets that config; any other needs
  its config.json (``CheckpointError`` says so).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Tuple, Union

import torch

from ..dtypes import from_safetensors
from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from ..network.config import UNet3DConfig
from ..network.parameters import count_parameters
from .config_inference import infer_config
from .folders import default_weight_files
from .layouts import ORIGINAL, check_is_unet3d, detect_layout, original_to_diffusers, strip_prefix
from .loading import explicit_config, validated_config
from .safe_io import check_readable_file, read_weight_file, sniff_format, usable_path
from .safetensors_header import read_header

PUBLISHED_PARAMETERS = 1_411_233_860          # ModelScope 1.7B = Zeroscope v2 576w = Zeroscope v2 XL
SIZE_TOLERANCE = 0.01                         # pickle framing adds well under 1%


@dataclass(frozen=True)
class CheckpointSummary:
    config: UNet3DConfig
    parameters: int
    storage_dtype: str              # the dominant floating dtype of the stored weights ("fp16", "fp32", ...)
    source: str
    how: str                        # "safetensors header", "config.json", "file size"


def read_safetensors_header(path: Union[str, Path]) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """name -> (shape, safetensors dtype code) from the checked header; reads only the header bytes."""
    return {name: (entry.shape, entry.dtype) for name, entry in read_header(path).entries.items()}


def config_from_shapes(shapes: Mapping[str, Tuple[int, ...]], source: str = "checkpoint") -> Tuple[UNet3DConfig, int]:
    """(config, parameter count) from tensor names and shapes, in either layout, via meta tensors (no data)."""
    metas = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    metas, _prefix = strip_prefix(metas)
    check_is_unet3d(metas, source)
    if detect_layout(metas) == ORIGINAL:
        metas = original_to_diffusers(metas, source)
    config = validated_config(infer_config(metas, source), source, inferred=True)
    return config, sum(t.numel() for t in metas.values())


def _dominant_dtype(dtypes: Iterable[Tuple[int, str]]) -> str:
    """The floating dtype holding the most elements, from (numel, safetensors code) pairs."""
    counts: Dict[str, int] = {}
    for numel, code in dtypes:
        known = from_safetensors(code)
        if known is not None and known.floating:
            counts[known.name] = counts.get(known.name, 0) + numel
    return max(counts, key=counts.get) if counts else "fp32"


def summarize_safetensors(paths) -> CheckpointSummary:
    shapes, dtypes = {}, []
    for path in paths:
        for name, (shape, dtype) in read_safetensors_header(path).items():
            shapes[name] = shape
            dtypes.append((int(torch.Size(shape).numel()), dtype))
    source = str(paths[0])
    config, params = config_from_shapes(shapes, source)
    return CheckpointSummary(config, params, _dominant_dtype(dtypes), source, "safetensors header")


def _unet_folder(path: Path) -> Path:
    if (path / "config.json").is_file():
        return path
    if (path / "unet" / "config.json").is_file():
        return path / "unet"
    raise CheckpointError(f"{path} has neither config.json nor unet/config.json; point the estimate at a diffusers "
                          f"UNet folder, a pipeline folder, or a .safetensors file")


def summarize_folder(path: Path) -> CheckpointSummary:
    folder = _unet_folder(path)
    raw, origin = explicit_config(folder)
    config = validated_config(raw, origin)
    try:
        weights = default_weight_files(folder)
    except CheckpointError:
        weights = []
    dtype = "fp16" if any(".fp16." in w.name for w in weights) else "fp32"
    if weights and sniff_format(weights[0]) == "safetensors":
        dtype = _dominant_dtype((entry.numel, entry.dtype) for entry in read_header(weights[0]).entries.values())
    return CheckpointSummary(config, count_parameters(config), dtype, str(folder), "config.json")


def summarize_by_size(path: Path) -> CheckpointSummary:
    size = path.stat().st_size
    for dtype, per in (("fp16", 2), ("fp32", 4)):
        if abs(size - PUBLISHED_PARAMETERS * per) <= SIZE_TOLERANCE * PUBLISHED_PARAMETERS * per:
            config, _ = UNet3DConfig.from_dict({})
            return CheckpointSummary(config, PUBLISHED_PARAMETERS, dtype, str(path), "file size")
    raise CheckpointError(f"{path} ({size / 1e9:.2f} GB) is a pickle file, which cannot be read without loading it, "
                          f"and its size matches no published ModelScope / Zeroscope UNet (2.82 GB fp16, 5.65 GB "
                          f"fp32). Give the estimate its config (config.json) or convert it to .safetensors.")


def summarize_checkpoint(path: Union[str, Path], config: Optional[Mapping] = None) -> CheckpointSummary:
    """Config, parameter count and storage dtype of a UNet3D checkpoint, without reading its weights.

    ``config``: a known config (then only the dtype is read from the file, where possible)."""
    path = usable_path(path, "checkpoint")
    if not path.exists():
        raise CheckpointNotFoundError(f"{path} does not exist; pick a model file from the loader's list")
    known = None if config is None else validated_config(config, "the given config")
    if path.is_dir():
        summary = summarize_folder(path)
    else:
        check_readable_file(path)
        kind = sniff_format(path)
        if kind == "safetensors":
            summary = summarize_safetensors([path])
        elif kind not in ("torch-zip", "pickle"):
            read_weight_file(path)  # raises the loader's own message for this kind of file
            raise CorruptCheckpointError(f"{path} is not a weight file this loader reads")
        elif known is not None:
            dtype = "fp16" if "fp16" in path.name else "fp32"
            return CheckpointSummary(known, count_parameters(known), dtype, str(path), "given config")
        else:
            summary = summarize_by_size(path)
    if known is not None:
        return CheckpointSummary(known, count_parameters(known), summary.storage_dtype, summary.source,
                                 "given config")
    return summary
