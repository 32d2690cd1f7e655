"""The forward pass's return value, with the access patterns of diffusers' model outputs.

A model output is a dataclass that is also an ordered dict of its set (non-None) fields: ``out.sample``,
``out["sample"]``, ``out[0]``, ``out[:1]``, ``out.to_tuple()``, ``isinstance(out, dict)``, ``out.keys()`` and
``dict(**out)`` all work, as scripts written for diffusers expect. Setting a field (as attribute or key) keeps both
views in step; removing keys is refused, since the fields are fixed.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any, Tuple

import torch
import torch.utils._pytree as pytree

from ..errors import ReadOnlyError


class ModelOutput(OrderedDict):
    """Base of the dataclass outputs: the dict holds the fields that are not None, in declaration order."""

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        # As a pytree node, the output can cross DistributedDataParallel(static_graph=True) and torch.compile
        # boundaries like diffusers' outputs do.
        try:
            pytree.register_pytree_node(
                cls, pytree._dict_flatten, lambda values, context: cls(**pytree._dict_unflatten(values, context)),
                serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")
        except (AttributeError, TypeError, ValueError):  # an older torch, or the class registered already (reload)
            pass

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None:
                self[field.name] = value

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return OrderedDict.__getitem__(self, key)
        return self.to_tuple()[key]  # an int or a slice indexes like a tuple

    def __setitem__(self, key: str, value: Any) -> None:
        OrderedDict.__setitem__(self, key, value)
        object.__setattr__(self, key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if value is not None and name in self.keys():
            OrderedDict.__setitem__(self, name, value)
        object.__setattr__(self, name, value)

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise ReadOnlyError(f"{type(self).__name__} has fixed fields; keys cannot be removed or merged in. Read "
                            f"them (out.sample, out['sample'], out[0]) or copy with dict(out).")

    __delitem__ = pop = popitem = setdefault = update = clear = _refuse

    def __reduce__(self):
        # Rebuild from the field values (the dict part is derived from them in __post_init__).
        return type(self), tuple(getattr(self, f.name) for f in fields(self))

    def to_tuple(self) -> Tuple[Any, ...]:
        """The set fields, in order."""
        return tuple(OrderedDict.__getitem__(self, key) for key in self.keys())


@dataclass
class UNet3DConditionOutput(ModelOutput):
    """``sample``: ``(batch, channels, frames, height, width)``."""

    sample: torch.Tensor
