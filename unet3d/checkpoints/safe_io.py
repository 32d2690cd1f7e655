"""Reading and writing weight files without ever running code from them.

* ``.safetensors``: read with the ``safetensors`` library; the header is checked first
  (``unet3d.checkpoints.safetensors_header``), so a truncated download gets a clear message instead of a parser error.
* Pickle-based files (``.pth``, ``.pt``, ``.bin``, ``.ckpt``): ``torch.load(weights_only=True)`` only, memory-mapped
  when the file is in torch's zip format. A pickle that asks for anything but tensors and plain containers is refused
  (torch's restricted unpickler raises before any of it runs) and we say so, naming the file.

The format is recognised from the file's first bytes, not its suffix, because renamed files are common.
"""
from __future__ import annotations

import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, MemoryLimitError, UnsafeCheckpointError
from .safetensors_header import looks_like_safetensors, read_header

PathLike = Union[str, Path]
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt")
_SAFETENSORS_HINT = ("Use the model's .safetensors file instead, or convert this file to .safetensors with a tool "
                     "you trust, in an environment you trust.")


def sniff_format(path: Path) -> str:
    """'safetensors', 'torch-zip', 'pickle', 'gguf' or 'unknown', from the first bytes of the file."""
    with open(path, "rb") as f:
        head = f.read(16)
    if looks_like_safetensors(head, path.stat().st_size):
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[:1] == b"\x80":
        return "pickle"
    if head[:4] == b"GGUF":
        return "gguf"
    if head[8:9] == b"{":
        return "safetensors"  # with an impossible header length: read_header says what is wrong
    return "unknown"


NAME_MAX, PATH_MAX = 255, 4096   # bytes: the limits of Linux and macOS file systems (Windows allows fewer)


def usable_path(path: PathLike, what: str = "path") -> Path:
    """``path`` as a Path; CheckpointNotFoundError naming it when no file system could hold it (a name over 255
    bytes, a path over 4096, a NUL byte) or the system refuses to look at it (permissions, a symlink loop). A path
    that simply does not exist passes: callers say what was expected there."""
    text = os.fspath(path)
    raw = os.fsencode(text)
    shown = text if len(text) <= 160 else f"{text[:80]}...{text[-60:]} ({len(raw)} bytes)"
    longest = max(len(part) for part in raw.split(b"/"))
    if b"\0" in raw or longest > NAME_MAX or len(raw) > PATH_MAX:
        reason = ("it contains a NUL byte" if b"\0" in raw else f"a name in it is {longest} bytes long"
                  if longest > NAME_MAX else f"it is {len(raw)} bytes long")
        raise CheckpointNotFoundError(f"The {what} {shown!r} cannot exist: {reason} (file systems allow names of at "
                                      f"most {NAME_MAX} bytes and paths of {PATH_MAX}). Check the path.")
    try:
        os.stat(text)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CheckpointNotFoundError(f"The {what} {shown!r} cannot be opened ({exc.strerror or exc}). Check the "
                                      f"path and its permissions.") from None
    return Path(text)


def check_readable_file(path: Path) -> int:
    path = usable_path(path, "checkpoint")
    if not path.exists():
        raise CheckpointNotFoundError(f"Checkpoint not found: {path} does not exist.")
    if path.is_dir():
        raise CheckpointNotFoundError(
            f"{path} is a folder; expected a weight file ({', '.join(WEIGHT_SUFFIXES)}). For a diffusers folder use "
            f"from_pretrained.")
    size = path.stat().st_size
    if size == 0:
        raise CorruptCheckpointError(f"{path} is empty (0 bytes); the download or copy probably failed. "
                                     f"Download the file again.")
    return size


def read_weight_file(path: PathLike) -> Any:
    """The object stored in a weight file: a dict of tensors for safetensors, whatever (restricted) the pickle holds
    otherwise. Pickle-based tensors may be memory-mapped views of the file."""
    path = Path(path)
    size = check_readable_file(path)
    kind = sniff_format(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    if kind == "torch-zip" and not zipfile.is_zipfile(path):
        raise CorruptCheckpointError(f"{path} is truncated or corrupt: it starts like a PyTorch zip checkpoint but "
                                     f"the zip directory at its end is missing ({size} bytes). Download it again.")
    if kind in ("torch-zip", "pickle"):
        return _read_pickle(path, mmap=kind == "torch-zip")
    if kind == "gguf":
        raise CorruptCheckpointError(f"{path} is a GGUF file; GGUF-quantised UNet3D weights are not supported. "
                                     f"Use the .safetensors or .pth release.")
    raise CorruptCheckpointError(
        f"{path} is neither a safetensors file nor a PyTorch checkpoint (first bytes {_first_bytes(path)!r}); it may "
        f"be truncated, an HTML error page saved by a failed download, or another format. Download it again.")


def _first_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(12)


def _read_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors import safe_open

    header = read_header(path)  # every entry checked against the file size first: a clear message for damaged files
    data = sum(entry.end - entry.start for entry in header.entries.values())
    memory = machine_memory()
    if memory and data > memory:  # e.g. a sparse file whose header promises terabytes of zeros
        raise MemoryLimitError(f"{path} holds {data / 1e9:.1f} GB of tensors, more than the {memory / 1e9:.1f} GB "
                               f"of memory of this machine; it cannot be loaded here (is it the right file?).")
    try:
        try:  # safetensors >= 0.8: pread reads straight into tensor memory, no page-cache mapping counted twice
            handle = safe_open(str(path), framework="pt", device="cpu", backend="pread")
        except TypeError:
            handle = safe_open(str(path), framework="pt", device="cpu")
        with handle as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # SafetensorError, OSError, dtype errors: all mean the file is unusable as is
        raise CorruptCheckpointError(f"{path} could not be read as safetensors: {exc}. The file is probably "
                                     f"truncated or corrupt; download it again.") from exc


def machine_memory() -> int:
    """Physical memory in bytes, or 0 where the system does not say (the check above is then skipped)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
_OPERAND_RE = re.compile(r"Unsupported operand \S+")


def _torch_load(path: Path, mmap: bool) -> Any:
    if path.name.endswith(".safetensors"):  # torch.load hands paths with this suffix to the safetensors library
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)


def _read_pickle(path: Path, mmap: bool) -> Any:
    try:
        return _torch_load(path, mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" not in text and "Unsupported" not in text:
            raise CorruptCheckpointError(f"{path} is not a readable PyTorch checkpoint ({_describe(exc)}). It is "
                                         f"probably truncated or corrupt; download it again.") from exc
        found = _GLOBAL_RE.search(text)
        operand = _OPERAND_RE.search(text)
        if found:
            what = f"Python objects other than tensors (it references `{found.group(1)}`)"
        elif operand:
            what = (f"pickle instructions the safe loader does not allow ({operand.group(0)}); the file is either "
                    f"corrupt or built to run code")
        else:
            what = "Python objects other than tensors"
        raise UnsafeCheckpointError(
            f"Refused to load {path}: this pickle contains {what}, and loading it could run code from the file. "
            f"Nothing from it was executed. {_SAFETENSORS_HINT}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, struct.error) as exc:
        raise CorruptCheckpointError(f"{path} is not a readable PyTorch checkpoint ({_describe(exc)}). It is "
                                     f"probably truncated or corrupt; download it again.") from exc


def _describe(exc: BaseException) -> str:
    text = _one_line(str(exc)).rstrip(".")
    if isinstance(exc, EOFError) or not text:
        return f"{type(exc).__name__}: {text or 'the file ends too early'}"
    return text


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "..."


def cast_floating(state_dict: Dict[str, torch.Tensor], dtype: Optional[torch.dtype]) -> None:
    """Cast floating-point tensors to ``dtype`` in place, one at a time, so the old copy is freed as we go."""
    if dtype is None:
        return
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and tensor.dtype != dtype:
            state_dict[key] = tensor.to(dtype)


def write_safetensors(state_dict: Mapping[str, torch.Tensor], path: PathLike,
                      metadata: Optional[Dict[str, str]] = None) -> None:
    """Write tensors to ``path`` (contiguous CPU copies only where needed)."""
    from safetensors.torch import save_file

    tensors = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensors[key] = tensor.contiguous()
    save_file(tensors, str(path), metadata={"format": "pt", **(metadata or {})})
