"""``from_pretrained`` / ``from_single_file`` / ``save_pretrained`` for UNet3DConditionModel.

The model class is passed in (``cls``) so this module does not import model.py. Weights are read by
:mod:`unet3d.checkpoint`, the model is built on ``meta`` and the tensors are assigned, never copied twice.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from .checkpoint import assign_state_dict, build_on_meta, read_unet3d_state_dict
from .checkpoint_errors import CheckpointError, CheckpointNotFoundError, WrongModelError
from .config import UNet3DConfig
from .config_inference import infer_config
from .safe_io import write_safetensors

log = logging.getLogger(__name__)
PathLike = Union[str, Path]
WEIGHTS_NAME = "diffusion_pytorch_model"
CONFIG_NAME = "config.json"
CLASS_NAME = "UNet3DConditionModel"
_WRITER_VERSION = "0.42.1"  # diffusers release whose config.json schema we write; diffusers reads it back unchanged


def _with_variant(name: str, variant: Optional[str]) -> str:
    """diffusers' naming: the variant goes before the last suffix (``x.fp16.safetensors``, ``x.index.fp16.json``)."""
    if not variant:
        return name
    stem, _, suffix = name.rpartition(".")
    return f"{stem}.{variant}.{suffix}"


def _listing(folder: Path, limit: int = 12) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "nothing (empty folder)"
    return ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def default_weight_files(folder: Path) -> List[Path]:
    """The weights a UI loader should use when nobody names a variant: the un-suffixed ones, else the only (or
    first) variant present."""
    variants = variants_present(folder)
    variant = None if None in variants or not variants else sorted(variants)[0]
    return find_weight_files(folder, variant)


def find_weight_files(folder: Path, variant: Optional[str] = None) -> List[Path]:
    """The weight file(s) of a diffusers model folder, preferring safetensors; shards via their index json."""
    for ext in ("safetensors", "bin"):
        single = folder / _with_variant(f"{WEIGHTS_NAME}.{ext}", variant)
        if single.is_file():
            return [single]
        index = folder / _with_variant(f"{WEIGHTS_NAME}.{ext}.index.json", variant)
        if index.is_file():
            return _shards_from_index(index)
    variants = variants_present(folder)
    expected = f"{_with_variant(WEIGHTS_NAME + '.safetensors', variant)} (or .bin, or a sharded *.index.json)"
    if variant:
        have = ", ".join(repr(v) for v in sorted(v for v in variants if v)) or "none"
        default = " and the default (un-suffixed) weights" if None in variants else ""
        raise CheckpointNotFoundError(f"{folder} has no {variant!r} variant of the weights: expected {expected}. "
                                      f"Variants present: {have}{default}. Pass one of those, or variant=None.")
    names = sorted(v for v in variants if v)
    if names:
        raise CheckpointNotFoundError(f"{folder} only has variant weights ({', '.join(names)}); pass "
                                      f"variant={names[0]!r}. Found: {_listing(folder)}.")
    raise CheckpointNotFoundError(f"{folder} contains no model weights: expected {expected}. Found: "
                                  f"{_listing(folder)}.")


def variants_present(folder: Path) -> set:
    """Variant names of the weight files in ``folder`` (None = un-suffixed), e.g. {None, 'fp16'}."""
    found = set()
    for path in folder.glob(f"{WEIGHTS_NAME}*"):
        name = path.name
        if ".index." in name:
            part = name.split(".")[-2]
            found.add(None if part == "index" else part)
            continue
        middle = name[len(WEIGHTS_NAME):].rsplit(".", 1)[0]  # ".fp16", "-00001-of-00002", ".fp16-00001-of-00002"
        found.add(middle[1:].split("-")[0] if middle.startswith(".") else None)
    return found


def _shards_from_index(index: Path) -> List[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index} is not a valid shard index (needs a 'weight_map'): {exc}") from exc
    shards = [index.parent / name for name in sorted(set(weight_map.values()))]
    absent = [s.name for s in shards if not s.is_file()]
    if absent:
        raise CheckpointNotFoundError(f"{index} lists {len(shards)} shards but {len(absent)} are missing: "
                                      f"{', '.join(absent[:5])}. Download the missing files.")
    return shards


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object, found {type(data).__name__}")
    return data


def _resolve_model_folder(path: PathLike, subfolder: Optional[str]) -> Path:
    root = Path(path)
    if not root.exists():
        raise CheckpointNotFoundError(f"Model folder not found: {root} does not exist.")
    if root.is_file():
        raise CheckpointError(f"{root} is a file; from_pretrained expects a diffusers folder (config.json + "
                              f"{WEIGHTS_NAME}.safetensors). Use from_single_file for a single checkpoint file.")
    folder = root / subfolder if subfolder else root
    if not folder.is_dir():
        raise CheckpointNotFoundError(f"{root} has no subfolder {subfolder!r}. Found: {_listing(root)}.")
    if not (folder / CONFIG_NAME).exists() and (folder / "model_index.json").exists():
        folder = _unet_of_pipeline(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointNotFoundError(f"{folder} has no {CONFIG_NAME}; expected a diffusers model folder "
                                      f"({CONFIG_NAME} + {WEIGHTS_NAME}.safetensors) or a pipeline folder with "
                                      f"model_index.json and unet/. Found: {_listing(folder)}.")
    return folder


ORIGINAL_RELEASE_NAME = "text2video_pytorch_model.pth"  # ModelScope / Zeroscope (A1111 extension) folders


def _original_release_file(path: PathLike, subfolder: Optional[str]) -> Optional[Path]:
    folder = Path(path) / subfolder if subfolder else Path(path)
    if not folder.is_dir() or (folder / CONFIG_NAME).exists() or (folder / "model_index.json").exists():
        return None
    candidate = folder / ORIGINAL_RELEASE_NAME
    return candidate if candidate.is_file() else None


def _unet_of_pipeline(root: Path) -> Path:
    index = _read_json(root / "model_index.json")
    entry = index.get("unet")
    pipeline = index.get("_class_name", "a pipeline")
    if entry is None:
        raise WrongModelError(f"{root} is {pipeline} (model_index.json) without a 'unet' component; components: "
                              f"{', '.join(k for k in index if not k.startswith('_'))}.")
    class_name = entry[-1] if isinstance(entry, (list, tuple)) and entry else None
    if class_name and class_name != CLASS_NAME:
        raise WrongModelError(f"{root} is {pipeline} whose unet is a {class_name}; this loader expects a "
                              f"{CLASS_NAME} (text-to-video ModelScope / Zeroscope pipeline).")
    if not (root / "unet").is_dir():
        raise CheckpointNotFoundError(f"{root}/model_index.json names a unet but the unet/ folder is missing. "
                                      f"Found: {_listing(root)}.")
    return root / "unet"


def _check_class(raw: Mapping[str, Any], where: Path) -> None:
    name = raw.get("_class_name")
    if name and name != CLASS_NAME:
        raise WrongModelError(f"{where} describes a {name}; this loader expects a {CLASS_NAME} "
                              f"(ModelScope text-to-video / Zeroscope UNet).")


def _config_from_mapping(raw: Mapping[str, Any], where: str, inferred: bool = False) -> UNet3DConfig:
    try:
        config, ignored = UNet3DConfig.from_dict(raw)
    except (ValueError, TypeError) as exc:
        if inferred:
            raise CheckpointError(f"the config inferred from the tensor shapes of {where} is not valid ({exc}). The "
                                  f"file may be damaged or use an unusual architecture; pass config= (a config.json "
                                  f"path or dict) describing it.") from exc
        raise CheckpointError(f"config from {where} is not a valid UNet3D config: {exc}") from exc
    extra = [k for k in ignored if not k.startswith("_")]
    if extra:
        log.info("Ignoring config keys UNet3DConditionModel does not take (from %s): %s", where, ", ".join(extra))
    return config


def load_pretrained(cls: Any, path: PathLike, subfolder: Optional[str] = None,
                    torch_dtype: Optional[torch.dtype] = None, variant: Optional[str] = None) -> torch.nn.Module:
    """Load a diffusers-format UNet3D folder (or a pipeline root whose unet/ is used). A ModelScope / Zeroscope
    release folder (``text2video_pytorch_model.pth`` and no config.json) is loaded as a single file."""
    original = _original_release_file(path, subfolder)
    if original is not None:
        if variant:
            raise CheckpointNotFoundError(f"{original.parent} is a ModelScope-layout folder; it has no {variant!r} "
                                          f"variant. Pass variant=None.")
        log.info("%s has no config.json; loading its ModelScope checkpoint %s", original.parent, original.name)
        return load_single_file(cls, original, torch_dtype=torch_dtype)
    folder = _resolve_model_folder(path, subfolder)
    raw = _read_json(folder / CONFIG_NAME)
    _check_class(raw, folder / CONFIG_NAME)
    config = _config_from_mapping(raw, str(folder / CONFIG_NAME))
    files = find_weight_files(folder, variant)
    sd, info = read_unet3d_state_dict(files, torch_dtype, source=str(files[0] if len(files) == 1 else folder))
    model = build_on_meta(cls, config)
    return assign_state_dict(model, sd, info.source, f"{folder / CONFIG_NAME}")


def _explicit_config(config: Union[Mapping[str, Any], PathLike]) -> Tuple[Dict[str, Any], str]:
    if isinstance(config, Mapping):
        return dict(config), "the given config"
    path = Path(config)
    if path.is_dir():  # a model folder, or a pipeline root whose unet/ holds the config
        nested = path / "unet" / CONFIG_NAME
        path = nested if not (path / CONFIG_NAME).exists() and nested.exists() else path / CONFIG_NAME
    if not path.is_file():
        raise CheckpointNotFoundError(f"Config not found: {path} does not exist.")
    raw = _read_json(path)
    _check_class(raw, path)
    return raw, str(path)


def load_single_file(cls: Any, path: PathLike, config: Optional[Union[Mapping[str, Any], PathLike]] = None,
                     torch_dtype: Optional[torch.dtype] = None,
                     attention_head_dim: Optional[int] = None) -> torch.nn.Module:
    """Load one checkpoint file in diffusers or original ModelScope layout; infer the config if none is given."""
    sd, info = read_unet3d_state_dict([Path(path)], torch_dtype)
    if config is None:
        raw, origin = infer_config(sd, info.source, attention_head_dim), "a config inferred from the tensor shapes"
    else:
        raw, origin = _explicit_config(config)
        if attention_head_dim is not None:
            raw["attention_head_dim"] = attention_head_dim
    model_config = _config_from_mapping(raw, origin if config is not None else info.source, inferred=config is None)
    model = build_on_meta(cls, model_config)
    return assign_state_dict(model, sd, info.source, origin)


def config_as_json(model: torch.nn.Module) -> Dict[str, Any]:
    """The diffusers config.json content for ``model`` (ours or a diffusers one)."""
    config = model.config
    if not isinstance(config, UNet3DConfig):
        config, _ = UNet3DConfig.from_dict(dict(config))
    data = config.to_json_dict()
    data["_diffusers_version"] = _WRITER_VERSION
    return data


def save_pretrained(model: torch.nn.Module, folder: PathLike, variant: Optional[str] = None) -> Path:
    """Write ``config.json`` + ``diffusion_pytorch_model[.variant].safetensors`` (diffusers layout)."""
    folder = Path(folder)
    state_dict = model.state_dict()
    on_meta = [k for k, t in state_dict.items() if t.is_meta]
    if on_meta:
        raise CheckpointError(f"cannot save: {len(on_meta)} tensors have no data (meta), e.g. {on_meta[0]}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(config_as_json(model), indent=2, sort_keys=True) + "\n")
    weights = folder / _with_variant(f"{WEIGHTS_NAME}.safetensors", variant)
    write_safetensors(state_dict, weights)
    return weights
