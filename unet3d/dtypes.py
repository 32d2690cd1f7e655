"""The one table of weight / activation dtypes: short name, torch dtype, bytes per element, safetensors code.

Every other place (the converter's ``--dtype``, a host loader's ``weight_dtype``, memory estimates, checkpoint
headers) derives what it needs from ``DTYPES``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class DType:
    name: str                     # the short name users type: "fp16"
    torch: Optional[torch.dtype]  # None where this torch build lacks it
    bytes: int
    safetensors: str              # the dtype code in a safetensors header
    floating: bool = True


DTYPES = (
    DType("fp32", torch.float32, 4, "F32"),
    DType("fp16", torch.float16, 2, "F16"),
    DType("bf16", torch.bfloat16, 2, "BF16"),
    DType("fp8_e4m3fn", getattr(torch, "float8_e4m3fn", None), 1, "F8_E4M3"),
    DType("fp8_e5m2", getattr(torch, "float8_e5m2", None), 1, "F8_E5M2"),
    DType("fp64", torch.float64, 8, "F64"),
    DType("int64", torch.int64, 8, "I64", floating=False),
    DType("int32", torch.int32, 4, "I32", floating=False),
    DType("int16", torch.int16, 2, "I16", floating=False),
    DType("int8", torch.int8, 1, "I8", floating=False),
    DType("uint8", torch.uint8, 1, "U8", floating=False),
    DType("bool", torch.bool, 1, "BOOL", floating=False),
)
_BY_NAME = {d.name: d for d in DTYPES}
_BY_TORCH = {d.torch: d for d in DTYPES if d.torch is not None}
_BY_CODE = {d.safetensors: d for d in DTYPES}
# What a model's weights may be stored as (the converter's and a host loader's choices).
WEIGHT_DTYPES = tuple(d.name for d in DTYPES[:5] if d.torch is not None)
# Floating dtypes a forward pass computes in.
COMPUTE_DTYPES = ("fp32", "fp16", "bf16")


def by_name(name: str) -> DType:
    if name not in _BY_NAME:
        raise ValueError(f"unknown dtype {name!r}; use one of {list(_BY_NAME)}")
    return _BY_NAME[name]


def name_of(dtype) -> str:
    """'fp16' etc. for a torch dtype (or its string form such as 'torch.float16' / 'float16')."""
    if isinstance(dtype, torch.dtype) and dtype in _BY_TORCH:
        return _BY_TORCH[dtype].name
    text = str(dtype).replace("torch.", "")
    for d in DTYPES:
        if d.torch is not None and str(d.torch).replace("torch.", "") == text or d.name == text:
            return d.name
    raise ValueError(f"unknown dtype {dtype!r}")


def torch_dtype(name: str) -> torch.dtype:
    d = by_name(name)
    if d.torch is None:
        raise ValueError(f"dtype {name!r} is not available in this torch build ({torch.__version__})")
    return d.torch


def bytes_per_element(name: str) -> int:
    return by_name(name).bytes


def from_safetensors(code: str) -> Optional[DType]:
    """The entry for a safetensors header dtype code, or None for codes this table does not know."""
    return _BY_CODE.get(code)
