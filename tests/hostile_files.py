"""Hostile and damaged checkpoint files, built by the tests: each one is what an attacker or a broken download could
put in a models folder. Every builder writes ``path`` and returns it; none needs a real model.

``raw_safetensors`` writes any header (the JSON given, or raw bytes) in front of ``data_bytes`` zero bytes (sparse),
so a header can lie about shapes and offsets without the file being large.
"""
from __future__ import annotations

import builtins
import json
import pickle
import struct
from pathlib import Path
from typing import Any, Dict, Optional

import torch


class CodePayload:
    """Unpickling this would create the file ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def raw_safetensors(path: Path, header: Optional[Dict[str, Any]] = None, data_bytes: int = 0,
                    raw: Optional[bytes] = None) -> Path:
    blob = raw if raw is not None else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + data_bytes)
    return path


def header_only(path: Path, shapes: Dict[str, tuple], dtype: str = "F16", element_bytes: int = 2) -> Path:
    """A sparse safetensors file with a real header for ``shapes`` and zero data."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = element_bytes * int(torch.Size(shape).numel())
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    return raw_safetensors(path, header, offset)


def unet_shapes(**config) -> Dict[str, tuple]:
    from unet3d import UNet3DConditionModel

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in UNet3DConditionModel(**config).state_dict().items()}


def header_only_unet(path: Path, **config) -> Path:
    """A full-size (or ``config``-sized) UNet3D header with no data: the estimate reads headers only."""
    return header_only(path, unet_shapes(**config))


# Header entries that each make a file unusable, with the words the refusal must contain.
BAD_ENTRIES = {
    "no-offsets": ({"dtype": "F16", "shape": [2]}, "data_offsets None"),
    "string-offsets": ({"dtype": "F16", "shape": [2], "data_offsets": ["0", "4"]}, "data_offsets ['0', '4']"),
    "one-offset": ({"dtype": "F16", "shape": [2], "data_offsets": [0]}, "data_offsets [0]"),
    "negative-shape": ({"dtype": "F16", "shape": [-2], "data_offsets": [0, 4]}, "shape [-2]"),
    "overflowing-shape": ({"dtype": "F16", "shape": [0, 2**64], "data_offsets": [0, 0]}, "larger than any real"),
    "float-shape": ({"dtype": "F16", "shape": [2.0], "data_offsets": [0, 4]}, "shape [2.0]"),
    "offsets-past-end": ({"dtype": "F16", "shape": [2], "data_offsets": [0, 4000]}, "truncated download"),
    "span-mismatch": ({"dtype": "F16", "shape": [4], "data_offsets": [0, 4]}, "needs 8 bytes"),
    "unknown-dtype": ({"dtype": "Q4", "shape": [2], "data_offsets": [0, 4]}, "dtype 'Q4'"),
}


def bad_entry_file(path: Path, kind: str) -> Path:
    entry, _ = BAD_ENTRIES[kind]
    return raw_safetensors(path, {"conv_in.weight": entry}, 16)


def deeply_nested_header(path: Path, depth: int = 100_000) -> Path:
    return raw_safetensors(path, raw=b'{"a":' + b"[" * depth + b"]" * depth + b"}")


def code_running_pickle(path: Path, marker: Path, zip_format: bool = True) -> Path:
    """A pickle that would create ``marker`` if anything unpickled it without restrictions."""
    payload = {"conv_in.weight": torch.zeros(2), "extra": CodePayload(marker)}
    if zip_format:
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    return path


def truncated_copy(source: Path, path: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
