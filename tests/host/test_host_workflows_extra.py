"""The Zeroscope two-stage and long-video example workflows run headless on the random stand-ins, at sizes that
still exercise what they are for: the re-denoise stage on an upscaled VAE-encoded video; frame windows with FreeNoise
and a travelling prompt (and the shipped 96-frame graph in the runner's quick mode)."""
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from comfy_runner.host import cache_root

pytestmark = pytest.mark.host
EXAMPLES = Path(__file__).resolve().parents[2] / "example_workflows"


def run_example(host, name, sets, quick=True):
    workflow = json.loads((EXAMPLES / name).read_text())
    assert any(n["type"] == "Note" for n in workflow["nodes"]), "every example explains its downloads in a Note"
    prepared = host.proc.request("prepare", workflow=workflow, sets=sets, cache_dir=str(cache_root()), quick=quick)
    answer = host.proc.run(prepared["prompt"])
    image = answer["outputs"]["9"]["images"][0]
    with Image.open(os.path.join(answer["output_dir"], image["subfolder"], image["filename"])) as im:
        return prepared["prompt"], im.n_frames, im.size


def test_two_stage_upscales_and_redenoises_with_the_xl_model(host):
    prompt, frames, size = run_example(host, "zeroscope_two_stage_576w_to_xl.json", [
        "7.steps=1", "14.steps=1", "6.frames=3", "6.width=64", "6.height=64", "11.width=128", "11.height=64"])
    assert prompt["14"]["inputs"]["denoise"] == pytest.approx(0.7)
    assert prompt["12"]["class_type"] == "VAEEncode" and prompt["14"]["inputs"]["latent_image"] == ["12", 0]
    assert (frames, size) == (3, (128, 64))


LONG_VIDEO = "zeroscope_long_video_frame_batching.json"


def test_long_video_travels_in_windows_with_freenoise(host):
    prompt, frames, size = run_example(host, LONG_VIDEO, [
        "KSampler.steps=1", "6.frames=16", "6.width=64", "6.height=64", "4.frames=16",
        "4.text=0: a panda at sunrise\n6: a panda at noon\n12: a panda at sunset", "13.context_length=8",
        "13.context_overlap=4", "13.max_batch_rows=8"], quick=False)
    chain = [prompt["7"]["inputs"]["model"][0], prompt["13"]["inputs"]["model"][0], prompt["11"]["inputs"]["model"][0]]
    assert [prompt[n]["class_type"] for n in chain] == ["UNet3DFrameBatching", "UNet3DFreeU", "UNet3DLoader"]
    assert prompt["7"]["inputs"]["positive"] == ["4", 0] and prompt["4"]["class_type"] == "UNet3DPromptTravel"
    assert prompt["13"]["inputs"]["freenoise"] is True
    assert frames == 16 and size == (64, 64)


def test_long_video_as_shipped_runs_in_the_runners_quick_mode(host):
    """96 frames and a schedule up to frame 80, shrunk by the runner to its quick size: the schedule follows."""
    workflow = json.loads((EXAMPLES / LONG_VIDEO).read_text())
    shipped = ui_values(workflow, 4)
    assert shipped[1] == 96 and ui_values(workflow, 6)[2] == 96 and ui_values(workflow, 13)[6] is True
    prompt, frames, _ = run_example(host, LONG_VIDEO, ["KSampler.steps=1"])
    assert frames == prompt["6"]["inputs"]["frames"] == prompt["4"]["inputs"]["frames"] < 96
    assert prompt["4"]["inputs"]["text"].count(":") == shipped[0].count(":")      # every keyframe kept


def ui_values(workflow, node_id):
    return next(n for n in workflow["nodes"] if n["id"] == node_id)["widgets_values"]
