"""A checkpoint's config and parameter count without loading its weights (for memory estimates).

* ``.safetensors``: the JSON header alone (names, shapes, dtypes; 8 bytes of length + the header), turned into meta
  tensors (no data) so the same layout detection, ModelScope -> diffusers renaming and config inference as loading
  apply (``unet3d.layouts``, ``unet3d.config_inference``).
* a diffusers folder (``config.json`` [+ weights]) or a pipeline folder with ``unet/``: the config.json; the storage
  dtype from a safetensors header when there is one, else from the ``.fp16`` variant name.
* pickle files (``.pth``/``.bin``/``.ckpt``) cannot be read without unpickling them: a file whose size matches the
  published ModelScope / Zeroscope UNet (1,411,233,860 parameters, fp16 or fp32) gets that config; any other needs
  its config.json (``CheckpointError`` says so).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import torch

from .checkpoint_errors import CheckpointError
from .config import UNet3DConfig
from .config_inference import infer_config
from .estimate import count_parameters
from .layouts import ORIGINAL, check_is_unet3d, detect_layout, original_to_diffusers, strip_prefix

MAX_HEADER_BYTES = 100 * 2**20
SAFETENSORS_DTYPES = {"F64": "fp64", "F32": "fp32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8_e4m3fn",
                      "F8_E5M2": "fp8_e5m2", "I64": "int64", "I32": "int32", "U8": "uint8", "BOOL": "bool"}
PUBLISHED_PARAMETERS = 1_411_233_860          # ModelScope 1.7B = Zeroscope v2 576w = Zeroscope v2 XL (spec 6c)
SIZE_TOLERANCE = 0.01                         # pickle framing adds well under 1%


@dataclass(frozen=True)
class CheckpointSummary:
    config: UNet3DConfig
    parameters: int
    storage_dtype: str              # the dominant floating dtype of the stored weights ("fp16", "fp32", ...)
    source: str
    how: str                        # "safetensors header", "config.json", "file size"


def read_safetensors_header(path: Union[str, Path]) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """name -> (shape, safetensors dtype) from the header; reads only the header bytes."""
    path = Path(path)
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise CheckpointError(f"{path} is too short to be a safetensors file ({len(raw_len)} bytes)")
        (length,) = struct.unpack("<Q", raw_len)
        if length > MAX_HEADER_BYTES or length > path.stat().st_size - 8:
            raise CheckpointError(f"{path}: safetensors header length {length} is impossible for a file of "
                                  f"{path.stat().st_size} bytes; the file is damaged or not safetensors")
        try:
            header = json.loads(f.read(length))
        except ValueError as exc:
            raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({exc}); download it again")
    return {name: (tuple(entry["shape"]), entry["dtype"]) for name, entry in header.items()
            if name != "__metadata__"}


def config_from_shapes(shapes: Mapping[str, Tuple[int, ...]], source: str = "checkpoint") -> Tuple[UNet3DConfig, int]:
    """(config, parameter count) from tensor names and shapes, in either layout, via meta tensors (no data)."""
    metas = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    metas, _prefix = strip_prefix(metas)
    check_is_unet3d(metas, source)
    if detect_layout(metas) == ORIGINAL:
        metas = original_to_diffusers(metas, source)
    config, _ignored = UNet3DConfig.from_dict(infer_config(metas, source))
    return config, sum(t.numel() for t in metas.values())


def _dominant_dtype(dtypes) -> str:
    counts: Dict[str, int] = {}
    for numel, dtype in dtypes:
        name = SAFETENSORS_DTYPES.get(dtype, dtype.lower())
        if name.startswith(("fp", "bf")):
            counts[name] = counts.get(name, 0) + numel
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
    raw = json.loads((folder / "config.json").read_text())
    if raw.get("_class_name", "UNet3DConditionModel") != "UNet3DConditionModel":
        raise CheckpointError(f"{folder}/config.json describes a {raw['_class_name']}, not a UNet3DConditionModel")
    config, _ignored = UNet3DConfig.from_dict(raw)
    weights = sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
    dtype = "fp16" if any(".fp16." in w.name for w in folder.glob("diffusion_pytorch_model*")) else "fp32"
    if weights:
        plain = [w for w in weights if ".fp16." not in w.name] or weights
        dtype = _dominant_dtype((int(torch.Size(s).numel()), d) for s, d in read_safetensors_header(plain[0]).values())
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
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pick a model file from the loader's list")
    if path.is_dir():
        summary = summarize_folder(path)
    else:
        with open(path, "rb") as f:
            head = f.read(9)
        if len(head) == 9 and head[8:9] == b"{":
            summary = summarize_safetensors([path])
        elif config is not None:
            known, _ = UNet3DConfig.from_dict(config)
            dtype = "fp16" if "fp16" in path.name else "fp32"
            return CheckpointSummary(known, count_parameters(known), dtype, str(path), "given config")
        else:
            summary = summarize_by_size(path)
    if config is not None:
        known, _ = UNet3DConfig.from_dict(config)
        return CheckpointSummary(known, count_parameters(known), summary.storage_dtype, summary.source,
                                 "given config")
    return summary
