"""Workflow JSON: UI format (what the browser saves) -> API format (what ComfyUI's executor runs), and ``--set``.

UI ``widgets_values`` are positional, in widget order: required then optional inputs whose type makes a widget
(INT, FLOAT, STRING, BOOLEAN, combo lists). A seed-like INT (``seed``, ``noise_seed`` or
``control_after_generate``) is followed by its control value ("fixed", "randomize"...), which is not sent. Muted
(mode 2) nodes are dropped; bypassed (mode 4) nodes are dropped and links through them go to their input of the same
type; Note / Reroute / Primitive nodes are resolved away. Pure functions; the node classes come from the host.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MUTED, BYPASSED = 2, 4


class WorkflowError(ValueError):
    pass


def is_api_format(data: Mapping[str, Any]) -> bool:
    return "nodes" not in data and all(isinstance(v, dict) and "class_type" in v for v in data.values())


def widget_inputs(input_types: Mapping[str, Any]) -> List[Tuple[str, bool]]:
    """(input name, followed by a control value?) for each widget, in widget order."""
    out = []
    for section in ("required", "optional"):
        for name, spec in (input_types.get(section) or {}).items():
            kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
            options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) \
                else {}
            if isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES:
                control = kind == "INT" and (name in ("seed", "noise_seed") or options.get("control_after_generate"))
                out.append((name, bool(control or options.get("control_after_generate"))))
    return out


def _widget_values(node: Mapping[str, Any], widgets: List[Tuple[str, bool]]) -> Dict[str, Any]:
    values = node.get("widgets_values")
    if isinstance(values, dict):
        return {name: values[name] for name, _ in widgets if name in values}
    values = list(values or [])
    out, i = {}, 0
    for name, control in widgets:
        if i >= len(values):
            break
        out[name] = values[i]
        i += 1
        if control and i < len(values) and (values[i] in CONTROL_VALUES or isinstance(values[i], bool)):
            i += 1
    return out


def ui_to_api(workflow: Mapping[str, Any], classes: Mapping[str, Any]) -> Dict[str, Any]:
    try:
        return _ui_to_api(workflow, classes)
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise WorkflowError(f"the workflow is malformed ({type(exc).__name__}: {exc}); save it again from "
                            f"ComfyUI") from None


def _ui_to_api(workflow: Mapping[str, Any], classes: Mapping[str, Any]) -> Dict[str, Any]:
    if is_api_format(workflow):
        return json.loads(json.dumps(workflow))
    if "nodes" not in workflow:
        raise WorkflowError("not a ComfyUI workflow: neither UI format (a 'nodes' list) nor API format")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link.get("type"))
        else:
            links[link[0]] = (link[1], link[2], link[5] if len(link) > 5 else None)

    def source(link_id, seen=()):
        """(node id, slot) that finally provides a link, or ('value', v) for a primitive, or None if muted."""
        if link_id is None or link_id not in links or link_id in seen:
            return None
        origin, slot, ltype = links[link_id]
        node = nodes.get(origin)
        if node is None:
            return None
        if node.get("type") == "Reroute":
            ins = node.get("inputs") or [{}]
            return source(ins[0].get("link"), seen + (link_id,))
        if node.get("type") == "PrimitiveNode":
            return ("value", (node.get("widgets_values") or [None])[0])
        if node.get("mode") == BYPASSED:
            out_type = ((node.get("outputs") or [])[slot] or {}).get("type") if slot < len(node.get("outputs") or []) \
                else ltype
            for inp in node.get("inputs") or []:
                if inp.get("type") == out_type and inp.get("link") is not None:
                    return source(inp["link"], seen + (link_id,))
            return None
        if node.get("mode") == MUTED:
            return None
        return (str(origin), slot)

    prompt = {}
    for node_id, node in nodes.items():
        ntype = node.get("type")
        if ntype in VIRTUAL or node.get("mode") in (MUTED, BYPASSED):
            continue
        if ntype not in classes:
            raise WorkflowError(f"node {node_id} has type {ntype!r}, which this ComfyUI does not know (a missing "
                                f"custom node pack?)")
        inputs = _widget_values(node, widget_inputs(classes[ntype].INPUT_TYPES()))
        for inp in node.get("inputs") or []:
            src = source(inp.get("link"))
            if src is None:
                continue
            inputs[inp["name"]] = src[1] if src[0] == "value" else [src[0], src[1]]
        prompt[str(node_id)] = {"class_type": ntype, "inputs": inputs,
                                "_meta": {"title": node.get("title") or ntype}}
    return prompt


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_workflow(path: str) -> Dict[str, Any]:
    """The workflow in ``path``, checked to be a UI- or API-format workflow before any host starts."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise WorkflowError(f"cannot read the workflow {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise WorkflowError(f"{path} is not JSON ({exc}); pass a workflow saved from ComfyUI (Save, or Export "
                            f"(API))") from None
    if not isinstance(data, dict) or not (is_api_format(data) or isinstance(data.get("nodes"), list)) or not data:
        kind = type(data).__name__ if not isinstance(data, dict) else "object"
        raise WorkflowError(f"{path} holds a JSON {kind} that is not a ComfyUI workflow: expected the UI format (an "
                            f"object with a 'nodes' list) or the API format (an object of {{id: {{'class_type', "
                            f"'inputs'}}}})")
    return data


def node_index(workflow: Mapping[str, Any]) -> List[Tuple[str, str, str]]:
    """(id, title, class name) of every node of a UI- or API-format workflow, for ``--set`` matching."""
    if is_api_format(workflow):
        return [(str(k), (v.get("_meta") or {}).get("title") or v["class_type"], v["class_type"])
                for k, v in workflow.items()]
    return [(str(n.get("id")), n.get("title") or n.get("type"), n.get("type")) for n in workflow.get("nodes") or []
            if isinstance(n, dict) and n.get("type") not in VIRTUAL]


def _split_set(item: str) -> Tuple[str, str, str]:
    target, sep, value = item.partition("=")
    node, dot, name = target.rpartition(".")
    if not sep or not dot or not node or not name:
        raise WorkflowError(f"--set {item!r}: expected node.input=value (node = id, title or class name)")
    return node, name, value


def _match(item: str, node: str, index: List[Tuple[str, str, str]]) -> str:
    matches = [i for i, title, _ in index if node in (i, title)]
    if not matches:
        matches = [i for i, _, kind in index if kind == node]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise WorkflowError(f"--set {item!r}: node {node!r} matches {len(matches)} nodes ({matches}); use the node id")
    names = sorted({title for _, title, _ in index} | {kind for _, _, kind in index})
    close = difflib.get_close_matches(node, names, n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise WorkflowError(f"--set {item!r}: no node {node!r} in this workflow.{hint} Nodes (id, title, class): "
                        f"{', '.join(f'{i} {t!r} {k}' for i, t, k in index[:30])}")


def check_sets(workflow: Mapping[str, Any], assignments: List[str]) -> None:
    """The ``--set`` syntax and node names against the workflow file, before the host starts (input names need the
    host's node classes: ``apply_sets``)."""
    index = node_index(workflow)
    for item in assignments:
        node, _, _ = _split_set(item)
        _match(item, node, index)


def _input_names(cls: Any) -> List[str]:
    spec = cls.INPUT_TYPES() or {}
    return [name for section in ("required", "optional") for name in (spec.get(section) or {})]


def apply_sets(prompt: Dict[str, Any], assignments: List[str], classes: Optional[Mapping[str, Any]] = None) -> None:
    """``node.input=value``: node is an id, a title, or a class_type that occurs once. With ``classes`` (the host's
    node classes), the input must be one the node takes."""
    index = node_index(prompt)
    for item in assignments:
        node, name, value = _split_set(item)
        target = _match(item, node, index)
        kind = prompt[target]["class_type"]
        if classes is not None and kind in classes:
            names = _input_names(classes[kind])
            if name not in names:
                close = difflib.get_close_matches(name, names, n=3)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise WorkflowError(f"--set {item!r}: node {target} ({kind}) has no input {name!r}.{hint} Its inputs: "
                                    f"{', '.join(names)}")
        prompt[target]["inputs"][name] = parse_value(value)
