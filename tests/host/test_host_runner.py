"""The example workflows (UI format) run headless with random stand-ins: through the shared host's ``prepare``
(conversion + stand-ins) and once through the ``python -m comfy_runner`` command line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from comfy_runner.host import cache_root

pytestmark = pytest.mark.host
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [REPO / "example_workflows" / name for name in
            ("zeroscope_v2_576w_text_to_video.json", "modelscope_t2v_1.7b_text_to_video.json")]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_workflow_runs_with_random_standins(host, path):
    workflow = json.loads(path.read_text())
    prepared = host.proc.request("prepare", workflow=workflow, sets=["KSampler.steps=1", "6.frames=4"],
                                 cache_dir=str(cache_root()))
    assert any("RANDOM stand-in" in n for n in prepared["notes"])
    for release_file in ("text2video_pytorch_model.pth", "open_clip_pytorch_model.bin", "VQGAN_autoencoder.pth"):
        assert any(release_file in n and "RANDOM stand-in" in n for n in prepared["notes"]), release_file
    answer = host.proc.run(prepared["prompt"])
    image = answer["outputs"]["9"]["images"][0]
    with Image.open(os.path.join(answer["output_dir"], image["subfolder"], image["filename"])) as im:
        assert im.n_frames == 4


def test_command_line_runner_prints_the_output_and_the_noise_warning(tmp_path):
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "comfy_runner", "run", str(EXAMPLES[0]), "--output", str(tmp_path),
           "--set", "KSampler.steps=1", "--set", "6.frames=2", "--set", "6.width=64", "--set", "6.height=64"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "output is noise" in done.stdout
    written = [line.split(" wrote ", 1)[1] for line in done.stdout.splitlines() if " wrote " in line]
    assert written and all(os.path.isfile(p) for p in written)
