"""UI -> API workflow conversion and --set (comfy_runner/workflow.py), without ComfyUI."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from comfy_runner.workflow import (
    WorkflowError,
    apply_sets,
    check_sets,
    is_api_format,
    read_workflow,
    ui_to_api,
    widget_inputs,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "example_workflows"


def _cls(required, optional=None):
    return type("N", (), {"INPUT_TYPES": classmethod(lambda c: {"required": required, "optional": optional or {}})})


CLASSES = {
    "Loader": _cls({"unet_name": (["a.pth", "b.pth"],), "weight_dtype": (["default", "fp16"],)}),
    "KSampler": _cls({"model": ("MODEL",), "seed": ("INT", {}), "steps": ("INT", {}), "cfg": ("FLOAT", {}),
                      "sampler_name": (["euler"],), "latent_image": ("LATENT",)}),
    "Patch": _cls({"model": ("MODEL",), "b1": ("FLOAT", {})}),
    "Save": _cls({"samples": ("LATENT",), "filename_prefix": ("STRING", {})}),
    "Latent": _cls({"width": ("INT", {}), "extra": ("INT", {"control_after_generate": True}), "flag": ("BOOLEAN", {})}),
}


def _node(i, t, widgets, inputs=(), mode=0, title=None):
    n = {"id": i, "type": t, "mode": mode, "widgets_values": widgets,
         "inputs": [{"name": name, "type": typ, "link": link} for name, typ, link in inputs],
         "outputs": [{"name": "out", "type": {"Loader": "MODEL", "Patch": "MODEL"}.get(t, "LATENT")}]}
    if title:
        n["title"] = title
    return n


def _workflow(patch_mode=0):
    return {"nodes": [
        _node(1, "Loader", ["b.pth", "fp16"]),
        _node(2, "Patch", [1.5], [("model", "MODEL", 1)], mode=patch_mode),
        _node(3, "Latent", [64, 7, "randomize", True]),
        _node(4, "KSampler", [123, "fixed", 20, 7.5, "euler"], [("model", "MODEL", 2), ("latent_image", "LATENT", 3)],
              title="Sampler"),
        _node(5, "Save", ["out"], [("samples", "LATENT", 4)]),
        _node(6, "Note", ["put files here"]),
    ], "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 4, 0, "MODEL"], [3, 3, 0, 4, 1, "LATENT"],
                 [4, 4, 0, 5, 0, "LATENT"]]}


def test_widget_order_skips_links_and_marks_seed_like_inputs():
    assert widget_inputs(CLASSES["KSampler"].INPUT_TYPES()) == [
        ("seed", True), ("steps", False), ("cfg", False), ("sampler_name", False)]


def test_ui_workflow_converts_with_control_values_dropped_and_notes_skipped():
    api = ui_to_api(_workflow(), CLASSES)
    assert set(api) == {"1", "2", "3", "4", "5"}
    assert api["4"]["inputs"] == {"seed": 123, "steps": 20, "cfg": 7.5, "sampler_name": "euler",
                                  "model": ["2", 0], "latent_image": ["3", 0]}
    assert api["3"]["inputs"] == {"width": 64, "extra": 7, "flag": True}
    assert api["1"]["inputs"] == {"unet_name": "b.pth", "weight_dtype": "fp16"}
    assert is_api_format(api) and ui_to_api(api, CLASSES) == api


def test_bypassed_node_is_routed_around_and_muted_node_is_dropped():
    api = ui_to_api(_workflow(patch_mode=4), CLASSES)
    assert "2" not in api and api["4"]["inputs"]["model"] == ["1", 0]
    api = ui_to_api(_workflow(patch_mode=2), CLASSES)
    assert "2" not in api and "model" not in api["4"]["inputs"]


def test_set_by_id_title_and_class_and_errors():
    api = ui_to_api(_workflow(), CLASSES)
    apply_sets(api, ["4.steps=3", "Sampler.cfg=1.5", "Save.filename_prefix=clip", "Loader.unet_name=a.pth"])
    assert api["4"]["inputs"]["steps"] == 3 and api["4"]["inputs"]["cfg"] == 1.5
    assert api["5"]["inputs"]["filename_prefix"] == "clip" and api["1"]["inputs"]["unet_name"] == "a.pth"
    with pytest.raises(WorkflowError, match="no node .Nope. in this workflow"):
        apply_sets(api, ["Nope.x=1"])
    with pytest.raises(WorkflowError, match="node.input=value"):
        apply_sets(api, ["steps"])


def test_unknown_node_type_names_the_node():
    wf = _workflow()
    wf["nodes"][0]["type"] = "MissingPackNode"
    with pytest.raises(WorkflowError, match="node 1 has type 'MissingPackNode'"):
        ui_to_api(wf, CLASSES)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.json")))
def test_example_workflows_are_ui_format_with_a_note(name):
    wf = json.loads((EXAMPLES / name).read_text())
    types = {n["type"] for n in wf["nodes"]}
    assert {"UNet3DLoader", "UNet3DEmptyLatentVideo", "KSampler", "SaveAnimatedWEBP", "Note"} <= types


def test_set_input_names_are_checked_against_the_node_with_a_suggestion():
    api = ui_to_api(_workflow(), CLASSES)
    with pytest.raises(WorkflowError, match=r"node 4 \(KSampler\) has no input 'stepz'\. Did you mean 'steps'\?"):
        apply_sets(api, ["KSampler.stepz=4"], CLASSES)
    apply_sets(api, ["KSampler.steps=4"], CLASSES)
    assert api["4"]["inputs"]["steps"] == 4


@pytest.mark.parametrize("sets, words", [
    (["NoSuchNode.steps=4"], "no node 'NoSuchNode' in this workflow"),
    (["KSamplr.steps=4"], "Did you mean 'KSampler'"),
    (["steps=4"], "expected node.input=value"),
])
def test_set_nodes_are_checked_against_the_file_before_any_host(sets, words):
    for workflow in (_workflow(), ui_to_api(_workflow(), CLASSES)):
        with pytest.raises(WorkflowError, match=words):
            check_sets(workflow, sets)
    check_sets(_workflow(), ["Sampler.steps=3", "4.cfg=2", "Loader.unet_name=a.pth"])


@pytest.mark.parametrize("content, words", [
    ("[1, 2]", "holds a JSON list that is not a ComfyUI workflow"),
    ("{}", "holds a JSON object that is not a ComfyUI workflow"),
    ('{"a": 1}', "not a ComfyUI workflow"),
    ("{nodes", "is not JSON"),
])
def test_workflow_files_that_are_not_workflows_are_named(tmp_path, content, words):
    path = tmp_path / "wf.json"
    path.write_text(content)
    with pytest.raises(WorkflowError, match=words) as err:
        read_workflow(str(path))
    assert str(path) in str(err.value)
    with pytest.raises(WorkflowError, match="cannot read the workflow"):
        read_workflow(str(tmp_path / "missing.json"))


def test_malformed_ui_workflow_is_a_workflow_error():
    with pytest.raises(WorkflowError, match="the workflow is malformed"):
        ui_to_api({"nodes": [{"type": "KSampler"}]}, CLASSES)


@pytest.mark.parametrize("content, sets, words", [
    ("[1, 2]", [], "holds a JSON list"),
    (None, ["NoSuchNode.steps=4"], "no node 'NoSuchNode'"),
])
def test_command_line_fails_before_starting_comfyui(tmp_path, content, sets, words):
    path = tmp_path / "wf.json"
    path.write_text(content or (EXAMPLES / "zeroscope_v2_576w_text_to_video.json").read_text())
    cmd = [sys.executable, "-m", "comfy_runner", "run", str(path), "--output", str(tmp_path / "out")]
    for item in sets:
        cmd += ["--set", item]
    done = subprocess.run(cmd, cwd=EXAMPLES.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and words in done.stderr, done.stdout + done.stderr
    assert "starting ComfyUI" not in done.stdout and "Traceback" not in done.stderr
