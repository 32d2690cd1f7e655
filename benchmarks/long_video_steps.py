"""Seconds per sampler step of the long-video example workflow against the plain text-to-video workflow at the same
size (frames, width, height), both run headless with the random stand-in models.

The two workflows run in one ComfyUI host, interleaved ``--repeats`` times (the machine's load changes, the ratio of
neighbouring runs does not much). A warm-up run loads the models; each timed run changes only the seed, so only the
sampler runs again, and its time (the executor's per-node time) is divided by its steps. On CPU the stand-in UNet is
tiny, so the ratio shows the extra UNet rows of the windows and what the example's other nodes cost, not a GPU's
absolute times.

    python benchmarks/long_video_steps.py                        # 96 frames, 256x144, 2 steps, 2 repeats
    python benchmarks/long_video_steps.py --frames 48 --width 128 --height 128 --steps 1 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "example_workflows"
LONG = "zeroscope_long_video_frame_batching.json"
PLAIN = "zeroscope_v2_576w_text_to_video.json"


def sized(proc, name, args, cache_dir):
    """The workflow as an API prompt with the stand-ins, at the benchmark's size."""
    workflow = json.loads((EXAMPLES / name).read_text())
    prompt = proc.request("prepare", workflow=workflow, sets=[], cache_dir=cache_dir, quick=False)["prompt"]
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "UNet3DEmptyLatentVideo":
            inputs.update(frames=args.frames, width=args.width, height=args.height)
        if node["class_type"] == "KSampler":
            inputs["steps"] = args.steps
        if node["class_type"] == "UNet3DPromptTravel":
            inputs["frames"] = args.frames
            inputs["text"] = "\n".join(f"{f}: a scene number {i}" for i, f in
                                       enumerate(range(0, args.frames, max(args.frames // 3, 1))))
    return prompt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=144)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--comfyui", help="ComfyUI root (default: $COMFYUI_PATH, else the embedded March-2024 host)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from comfy_runner.client import HostProcess
    from comfy_runner.host import cache_root

    out = tempfile.mkdtemp(prefix="unet3d-long-video-steps-")
    with HostProcess(args.comfyui, out, log_path=f"{out}/host.log") as proc:
        prompts = {name: sized(proc, name, args, str(cache_root())) for name in (PLAIN, LONG)}
        sampler = {name: next(k for k, n in prompt.items() if n["class_type"] == "KSampler")
                   for name, prompt in prompts.items()}
        for prompt in prompts.values():                      # warm-up: loads, CLIP encodes
            proc.run(prompt)
        per_step = {name: [] for name in prompts}
        for i in range(args.repeats):
            for name, prompt in prompts.items():
                prompt[sampler[name]]["inputs"]["seed"] = 100 + i   # a new seed: only the sampler runs again
                answer = proc.run(prompt)
                per_step[name].append(answer["node_seconds"][sampler[name]] / args.steps)
        print(f"ComfyUI {proc.hello.get('version')}; {args.frames} frames {args.width}x{args.height}, "
              f"{args.steps} steps, stand-in models\n")
    print("| workflow | s / step (each run) | median | ratio |")
    print("|---|---|---|---|")
    base = statistics.median(per_step[PLAIN])
    for name, values in per_step.items():
        median = statistics.median(values)
        print(f"| `{name}` | {', '.join(f'{v:.2f}' for v in values)} | {median:.2f} | {median / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
