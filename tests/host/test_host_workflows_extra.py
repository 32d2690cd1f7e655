"""The Zeroscope two-stage and long-video example workflows run headless on the random stand-ins, at sizes that
still exercise what they are for: the re-denoise stage on an upscaled VAE-encoded video, and frame windows."""
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from comfy_runner.host import cache_root

pytestmark = pytest.mark.host
EXAMPLES = Path(__file__).resolve().parents[2] / "example_workflows"


def run_example(host, name, sets):
    workflow = json.loads((EXAMPLES / name).read_text())
    assert any(n["type"] == "Note" for n in workflow["nodes"]), "every example explains its downloads in a Note"
    prepared = host.proc.request("prepare", workflow=workflow, sets=sets, cache_dir=str(cache_root()))
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


def test_long_video_runs_in_frame_windows_with_freeu_and_slicing(host):
    prompt, frames, size = run_example(host, "zeroscope_long_video_frame_batching.json", [
        "KSampler.steps=1", "6.frames=8", "6.width=64", "6.height=64", "13.context_length=4",
        "13.context_overlap=2", "13.max_batch_rows=4"])
    chain = [prompt["7"]["inputs"]["model"][0], prompt["13"]["inputs"]["model"][0], prompt["12"]["inputs"]["model"][0]]
    assert [prompt[n]["class_type"] for n in chain] == ["UNet3DFrameBatching", "UNet3DAttentionSlicing",
                                                         "UNet3DFreeU"]
    assert frames == 8 and size == (64, 64)
