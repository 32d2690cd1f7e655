"""Finding things in model folders: a diffusers model or pipeline folder's config and weight files (variants, shard
indexes), and a ModelScope / Zeroscope release folder's ``text2video_pytorch_model.pth``. Reads JSON, never weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .. import bounded_json
from ..errors import CheckpointError, CheckpointNotFoundError, WrongModelError

PathLike = Union[str, Path]
WEIGHTS_NAME = "diffusion_pytorch_model"
CONFIG_NAME = "config.json"
CLASS_NAME = "UNet3DConditionModel"
ORIGINAL_RELEASE_NAME = "text2video_pytorch_model.pth"  # ModelScope / Zeroscope (A1111 extension) folders
MAX_JSON_BYTES = 16 * 2**20                             # a shard index of a huge model is a few hundred kB
MAX_SHARDS = 10_000
MAX_JSON_DEPTH = 32                                      # configs and indexes nest 2-3 levels


def with_variant(name: str, variant: Optional[str]) -> str:
    """diffusers' naming: the variant goes before the last suffix (``x.fp16.safetensors``, ``x.index.fp16.json``)."""
    if not variant:
        return name
    stem, _, suffix = name.rpartition(".")
    return f"{stem}.{variant}.{suffix}"


def listing(folder: Path, limit: int = 12) -> str:
    """A short listing of a folder's entries for error messages."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "nothing (empty folder)"
    return ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def read_json(path: Path) -> Dict[str, Any]:
    """A JSON object from ``path`` (bounded size), or CheckpointError naming the file."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is {path.stat().st_size} bytes, too large for a config or index file "
                                  f"(at most {MAX_JSON_BYTES}); is it the right file?")
        data = bounded_json.loads(path.read_text(encoding="utf-8"), MAX_JSON_DEPTH)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({type(exc).__name__}: {exc}); fix or re-download "
                              f"it.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object, found {type(data).__name__}")
    return data


def default_weight_files(folder: Path) -> List[Path]:
    """The weights a UI loader should use when nobody names a variant: the un-suffixed ones, else the only (or
    first) variant present."""
    variants = variants_present(folder)
    variant = None if None in variants or not variants else sorted(variants)[0]
    return find_weight_files(folder, variant)


def find_weight_files(folder: Path, variant: Optional[str] = None,
                      use_safetensors: Optional[bool] = None) -> List[Path]:
    """The weight file(s) of a diffusers model folder, in diffusers' order: safetensors before pickles and, within a
    format, a shard index before a single file. ``use_safetensors``: True = safetensors only, False = pickles only
    (read with the safe loader), None = either."""
    formats = {True: ("safetensors",), False: ("bin",)}.get(use_safetensors, ("safetensors", "bin"))
    for ext in formats:
        index = folder / with_variant(f"{WEIGHTS_NAME}.{ext}.index.json", variant)
        if index.is_file():
            return shards_from_index(index)
        single = folder / with_variant(f"{WEIGHTS_NAME}.{ext}", variant)
        if single.is_file():
            return [single]
    if len(formats) == 1:
        other = "bin" if formats[0] == "safetensors" else "safetensors"
        present = sorted(p.name for p in folder.glob(f"{WEIGHTS_NAME}*.{other}*"))
        if present:
            raise CheckpointNotFoundError(f"{folder} has no .{formats[0]} weights (use_safetensors={use_safetensors}) "
                                          f"but has {', '.join(present[:3])}. Pass use_safetensors=None to read "
                                          f"whichever is there.")
    variants = variants_present(folder)
    expected = f"{with_variant(WEIGHTS_NAME + '.safetensors', variant)} (or .bin, or a sharded *.index.json)"
    if variant:
        have = ", ".join(repr(v) for v in sorted(v for v in variants if v)) or "none"
        default = " and the default (un-suffixed) weights" if None in variants else ""
        raise CheckpointNotFoundError(f"{folder} has no {variant!r} variant of the weights: expected {expected}. "
                                      f"Variants present: {have}{default}. Pass one of those, or variant=None.")
    names = sorted(v for v in variants if v)
    if names:
        raise CheckpointNotFoundError(f"{folder} only has variant weights ({', '.join(names)}); pass "
                                      f"variant={names[0]!r}. Found: {listing(folder)}.")
    raise CheckpointNotFoundError(f"{folder} contains no model weights: expected {expected}. Found: "
                                  f"{listing(folder)}.")


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


def shards_from_index(index: Path) -> List[Path]:
    """The shard files an index names. They must be plain file names in the index's own folder."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} is not a valid shard index: 'weight_map' must be a non-empty object "
                              f"{{tensor name: shard file}}, found {type(weight_map).__name__}. Re-download it.")
    names = sorted({name for name in weight_map.values()} if all(isinstance(n, str) for n in weight_map.values())
                   else ())
    if not names:
        raise CheckpointError(f"{index}: every 'weight_map' value must be a shard file name (text). Re-download it.")
    if len(names) > MAX_SHARDS:
        raise CheckpointError(f"{index} names {len(names)} shard files (at most {MAX_SHARDS}); it is damaged.")
    outside = [n for n in names if Path(n).name != n or n in (".", "..")]
    if outside:
        raise CheckpointError(f"{index} names shard files outside its folder ({outside[0]!r}); shard names must be "
                              f"plain file names next to the index. Nothing was read from them.")
    shards = [index.parent / name for name in names]
    absent = [s.name for s in shards if not s.is_file()]
    if absent:
        raise CheckpointNotFoundError(f"{index} lists {len(shards)} shards but {len(absent)} are missing: "
                                      f"{', '.join(absent[:5])}. Download the missing files.")
    return shards


def resolve_model_folder(path: PathLike, subfolder: Optional[str]) -> Path:
    """The folder holding a diffusers UNet's config.json: ``path[/subfolder]``, or the ``unet/`` of a pipeline."""
    root = Path(path)
    if not root.exists():
        raise CheckpointNotFoundError(f"Model folder not found: {root} does not exist. Only local folders load; "
                                      f"download the model first (e.g. `huggingface-cli download <repo id>`) and "
                                      f"pass its folder.")
    if root.is_file():
        raise CheckpointError(f"{root} is a file; from_pretrained expects a diffusers folder (config.json + "
                              f"{WEIGHTS_NAME}.safetensors). Use from_single_file for a single checkpoint file.")
    folder = root / subfolder if subfolder else root
    if not folder.is_dir():
        raise CheckpointNotFoundError(f"{root} has no subfolder {subfolder!r}. Found: {listing(root)}.")
    if not (folder / CONFIG_NAME).exists() and (folder / "model_index.json").exists():
        folder = unet_of_pipeline(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointNotFoundError(f"{folder} has no {CONFIG_NAME}; expected a diffusers model folder "
                                      f"({CONFIG_NAME} + {WEIGHTS_NAME}.safetensors) or a pipeline folder with "
                                      f"model_index.json and unet/. Found: {listing(folder)}.")
    return folder


def original_release_file(path: PathLike, subfolder: Optional[str]) -> Optional[Path]:
    """``text2video_pytorch_model.pth`` of a ModelScope / Zeroscope release folder (one without config.json)."""
    folder = Path(path) / subfolder if subfolder else Path(path)
    if not folder.is_dir() or (folder / CONFIG_NAME).exists() or (folder / "model_index.json").exists():
        return None
    candidate = folder / ORIGINAL_RELEASE_NAME
    return candidate if candidate.is_file() else None


def unet_of_pipeline(root: Path) -> Path:
    index = read_json(root / "model_index.json")
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
                                      f"Found: {listing(root)}.")
    return root / "unet"


def check_class(raw: Dict[str, Any], where: Path) -> None:
    name = raw.get("_class_name")
    if name and name != CLASS_NAME:
        raise WrongModelError(f"{where} describes a {name}; this loader expects a {CLASS_NAME} "
                              f"(ModelScope text-to-video / Zeroscope UNet).")
