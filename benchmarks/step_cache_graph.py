"""UNet3D Step Cache in a real ComfyUI graph: seconds of a whole KSampler run and how far its final latent moves.

The graph is the text-to-video one (``UNet3DLoader`` -> [``UNet3DStepCache``] -> ``KSampler``, the stand-in
OpenCLIP-H text encoder, ``UNet3DEmptyLatentVideo``), run headless in one ComfyUI host process: the embedded
March-2024 ComfyUI, or ``--comfyui``. Each setting's UNet is a random-weight model of that config (torch's default
init, seed 0) saved as safetensors in a temporary folder that the host process gets as an extra ``unet`` folder.

Per repeat every interval runs once, interleaved (the order alternates between repeats), all with the repeat's
seed: a new seed makes the sampler run again while the text encodings stay cached. The time is the executor's time
of the KSampler node (all its steps, cfg as ComfyUI batches it); the speed-up is the plain run's median over the
cached run's; the error is max |cached - plain| / max |plain| of the final latents of the same seed. Random weights:
the error says how far the cache moves the sampler, not how a video looks. An interval with a ``t`` (``3t``) also
sets the node's ``reuse_temporal_in``.

    python benchmarks/step_cache_graph.py [--settings tiny,medium,zeroscope-small] [--steps 20]
                                          [--intervals 1,2,3,5,3t] [--repeats 2] [--depth 1] [--sampler euler]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import SETTINGS, table  # noqa: E402
from comfy_runner import graphs  # noqa: E402
from comfy_runner.standins import TINY_UNET  # noqa: E402

PROBE = REPO / "benchmarks" / "_graph_probe.py"
# name -> (config, (frames, latent height, latent width)). "tiny" is the stand-in UNet the workflows run on without
# weights (the tiny config of forward.py cross-attends to 64 wide text, not to the 1024 wide OpenCLIP-H);
# "zeroscope-small" is the real Zeroscope v2 576w config at a CPU-sized 8 frames of 256x144.
CONFIGS = {
    "tiny": (TINY_UNET, (8, 16, 16)),
    "medium": (SETTINGS["medium"][0], (8, 32, 48)),
    "zeroscope-small": ({}, (8, 18, 32)),
}


def save_model(name: str, folder: Path) -> str:
    from safetensors.torch import save_file

    from unet3d import UNet3DConditionModel
    torch.manual_seed(0)
    model = UNet3DConditionModel(**CONFIGS[name][0])
    file = f"unet3d-bench-{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / file))
    return file


PLAIN = (1, False)


def parse_intervals(text: str):
    """``"2,3,3t"`` -> ``[(1, False), (2, False), (3, False), (3, True)]``: the plain run first, ``t`` = also reuse
    transformer_in's delta."""
    intervals = []
    for entry in text.split(","):
        entry = entry.strip()
        reuse = entry.endswith("t")
        digits = entry[:-1] if reuse else entry
        if not digits.isdigit() or not 1 <= int(digits) <= 1000:
            raise SystemExit(f"--intervals: {entry!r} is not an interval from 1 to 1000 (optionally with a 't')")
        intervals.append((int(digits), reuse and int(digits) > 1))
    return [PLAIN] + [n for n in dict.fromkeys(intervals) if n != PLAIN]


def label(n) -> str:
    return f"{n[0]}" + (" + temporal_in reused" if n[1] else "")


def run_setting(proc, standins, name, file, args, capture_dir):
    frames, height, width = CONFIGS[name][1]
    intervals = parse_intervals(args.intervals)
    seconds = {n: [] for n in intervals}
    errors = {n: [] for n in intervals}

    def prompt(n, seed):
        interval, reuse_temporal_in = n
        patch = None if n == PLAIN else ("UNet3DStepCache", {
            "interval": interval, "start_percent": 0.0, "end_percent": 1.0, "depth": args.depth,
            "reuse_temporal_in": reuse_temporal_in})
        return graphs.t2v_prompt(file, standins["clip"], width=8 * width, height=8 * height, frames=frames,
                                 seed=seed, steps=args.steps, cfg=9.0, sampler_name=args.sampler,
                                 scheduler="normal", patch=patch)

    def sample(n, seed):
        latent, answer = proc.sample(prompt(n, seed), graphs.SAMPLER, capture_dir)
        return answer["node_seconds"][graphs.SAMPLER], latent

    proc.run(prompt(PLAIN, 0))   # warm-up: loads the model and the text encoder, encodes the prompts
    for r in range(args.repeats):
        latents = {}
        for n in (intervals if r % 2 == 0 else intervals[::-1]):
            took, latents[n] = sample(n, 100 + r)
            seconds[n].append(took)
        for n in intervals:
            plain = latents[PLAIN]
            errors[n].append(((latents[n] - plain).abs().max() / plain.abs().max()).item())
        print(f"{name} repeat {r + 1}: " + ", ".join(f"N={label(n)} {seconds[n][-1]:.1f}s err {errors[n][-1]:.1e}"
                                                   for n in intervals),
              file=sys.stderr, flush=True)
    base = statistics.median(seconds[PLAIN])
    return [[name, f"{frames}x{8 * height}x{8 * width}", label(n), ", ".join(f"{s:.1f}" for s in seconds[n]),
             f"{statistics.median(seconds[n]):.1f}", f"{base / statistics.median(seconds[n]):.2f}x",
             f"{max(errors[n]):.2e}"] for n in intervals]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="tiny,medium,zeroscope-small")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--intervals", default="1,2,3,5")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--depth", type=int, default=1, help="the node's depth input (its default is 1)")
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--comfyui", help="ComfyUI root (default: $COMFYUI_PATH, else the embedded March-2024 host)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.settings.split(",")) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {sorted(CONFIGS)}")
    from comfy_runner.client import HostProcess
    from comfy_runner.host import cache_root

    work = Path(tempfile.mkdtemp(prefix="unet3d-step-cache-graph-"))
    (work / "unet").mkdir()
    (work / "captures").mkdir()
    rows = []
    with HostProcess(args.comfyui, str(work / "output"), log_path=str(work / "host.log")) as proc:
        standins = proc.request("standins", cache_dir=str(cache_root()))
        for name in args.settings.split(","):
            file = save_model(name, work / "unet")
            proc.call(str(PROBE), "add_unet_folder", folder=str(work / "unet"))
            rows += run_setting(proc, standins, name, file, args, str(work / "captures"))
            (work / "unet" / file).unlink()
        version = proc.hello.get("version")
    print(f"ComfyUI {version}, torch {torch.__version__}, fp32 CPU; KSampler {args.sampler}/normal, "
          f"{args.steps} steps, cfg 9, step cache depth {args.depth}; {args.repeats} interleaved repeats\n")
    print(table(rows, ["setting", "frames x h x w", "interval", "KSampler s (each run)", "median s", "speed-up",
                       "rel err of final latent (max)"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
