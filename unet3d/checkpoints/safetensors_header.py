"""The one reader of safetensors headers: names, dtypes, shapes and byte ranges, checked before anything is read.

A safetensors file is 8 bytes of little-endian header length, a JSON object ``{name: {"dtype", "shape",
"data_offsets": [start, end]}, "__metadata__": {...}}``, then the tensor bytes. Every number in the header is bounded
and cross-checked (shape x dtype size = byte range, ranges inside the file) here, so no caller sizes anything from an
unchecked value, and a damaged file gets one message naming it instead of a parser error.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple, Union

from .. import bounded_json
from ..dtypes import from_safetensors
from ..errors import CorruptCheckpointError

MAX_HEADER_BYTES = 16 * 2**20       # the real 1.41 B-parameter UNet's header is about 150 kB, a full SDXL's 400 kB
MAX_TENSORS = 200_000
MAX_DIMS = 8
MAX_ELEMENTS = 2**48                # no real tensor is near this; bounds shapes that hold zero elements too
MAX_NESTING = 4                     # {entries: {name: {field: [numbers]}}} is three levels deep


@dataclass(frozen=True)
class TensorEntry:
    dtype: str                      # the safetensors code, e.g. "F16"
    shape: Tuple[int, ...]
    start: int                      # byte offsets relative to the end of the header
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    entries: Dict[str, TensorEntry]
    metadata: Dict[str, str]
    data_start: int                 # 8 + header length
    file_size: int


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """True for the first bytes of a safetensors file of ``size`` bytes: an 8-byte header length that fits in the file,
    then the JSON object's ``{``. (A length whose first byte is 0x80 must not pass for a pickle's opcode.)"""
    return len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] + 8 <= size


def _bad(path: Path, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{path} is not a usable safetensors file: {what}. The file is damaged, truncated "
                                  f"or not safetensors; download it again.")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(path: Path, name: str, raw: Any, data_bytes: int) -> TensorEntry:
    if not isinstance(raw, dict):
        raise _bad(path, f"header entry {name!r} is a {type(raw).__name__}, not an object")
    dtype, shape, offsets = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
    known = from_safetensors(dtype) if isinstance(dtype, str) else None
    if known is None:
        raise _bad(path, f"tensor {name!r} has dtype {dtype!r}, which is not a safetensors dtype this loader reads")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_count(s) for s in shape):
        raise _bad(path, f"tensor {name!r} has shape {shape!r}; expected a list of at most {MAX_DIMS} whole "
                         f"numbers >= 0")
    if math.prod(max(s, 1) for s in shape) > MAX_ELEMENTS:
        raise _bad(path, f"tensor {name!r} has shape {shape}, larger than any real tensor (more than 2^48 elements)")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise _bad(path, f"tensor {name!r} has data_offsets {offsets!r}; expected [start, end] whole numbers")
    start, end = offsets
    if end > data_bytes:
        raise _bad(path, f"tensor {name!r} ends at byte {end} of the data, but the file holds only {data_bytes} "
                         f"data bytes (truncated download?)")
    if end < start or math.prod(shape) * known.bytes != end - start:
        raise _bad(path, f"tensor {name!r}: shape {shape} of {dtype} needs {math.prod(shape) * known.bytes} bytes, "
                         f"but data_offsets {offsets} span {end - start}")
    return TensorEntry(dtype, tuple(shape), start, end)


def read_header(path: Union[str, Path]) -> SafetensorsHeader:
    """Parse and check the header of ``path``; reads only the header bytes. Raises CorruptCheckpointError."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise _bad(path, f"it has only {size} bytes")
        (length,) = struct.unpack("<Q", raw_len)
        if length > MAX_HEADER_BYTES or length + 8 > size:
            raise _bad(path, f"the header length field says {length} bytes, impossible for a file of {size} bytes")
        text = f.read(length)
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(path, "its header is not UTF-8 text") from None
    try:
        header = bounded_json.loads(decoded, MAX_NESTING)
    except ValueError as exc:
        raise _bad(path, f"its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _bad(path, f"its header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _bad(path, "its __metadata__ is not an object")
    if len(header) > MAX_TENSORS:
        raise _bad(path, f"its header lists {len(header)} tensors (more than {MAX_TENSORS})")
    data_bytes = size - 8 - length
    entries = {name: _entry(path, name, raw, data_bytes) for name, raw in header.items()}
    return SafetensorsHeader(path, entries, {str(k): str(v) for k, v in metadata.items()}, 8 + length, size)
