"""JSON from files and requests, bounded in nesting before the parser sees it (a deep ``[[[[...`` cannot exhaust the
recursion limit) and without the non-standard constants ``NaN`` / ``Infinity``."""
from __future__ import annotations

import json
from typing import Any


def json_depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def loads(text: str, max_depth: int) -> Any:
    """``json.loads`` for untrusted text; ValueError when it nests deeper than ``max_depth`` or is not JSON."""
    if json_depth(text) > max_depth:
        raise ValueError(f"it nests deeper than {max_depth} levels")
    return json.loads(text, parse_constant=_no_constants)
