"""ComfyUI's own ``TorchCompileModel`` node on a UNet3D: does it compile, what does the first run cost, what does a
compiled KSampler run take against the same graph without the node, and are the results the same.

The graph is the text-to-video one on the random stand-in UNet (``UNet3DLoader`` -> [``TorchCompileModel``] ->
``KSampler``), run headless in one ComfyUI host process. ``TorchCompileModel`` exists from ComfyUI 0.3.x on, so give
a current ComfyUI with ``--comfyui`` (or ``COMFYUI_PATH``); the embedded March-2024 host has no such node. The
first compiled run includes the compilation; later runs change only the seed (same shapes, no recompilation), each
followed by the plain graph with the same seed. Graph breaks and the number of compiled graphs are read from
torch._dynamo's counters in the host process.

    python benchmarks/compile_graph.py --comfyui /path/to/ComfyUI [--backend inductor] [--steps 4] [--repeats 3]
                                       [--host-args=--use-pytorch-cross-attention]
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
from comfy_runner import graphs  # noqa: E402

PROBE = REPO / "benchmarks" / "_graph_probe.py"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", help="ComfyUI root with TorchCompileModel (default: $COMFYUI_PATH)")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="width and height in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--host-args", default="",
                        help="ComfyUI command-line flags, e.g. --use-pytorch-cross-attention (on CPU ComfyUI's default "
                             "attention kernel asks psutil for free memory on every call: a graph break each time)")
    args = parser.parse_args(argv)
    from comfy_runner.client import HostProcess
    from comfy_runner.host import cache_root

    work = Path(tempfile.mkdtemp(prefix="unet3d-compile-graph-"))
    (work / "captures").mkdir()
    with HostProcess(args.comfyui, str(work / "output"), host_args=args.host_args,
                     log_path=str(work / "host.log")) as proc:
        if "TorchCompileModel" not in proc.request("object_info")["classes"]:
            print(f"ComfyUI {proc.hello.get('version')} at {proc.root} has no TorchCompileModel node; give a ComfyUI "
                  f"0.3.x or later with --comfyui", file=sys.stderr)
            return 2
        standins = proc.request("standins", cache_dir=str(cache_root()))

        def sample(seed, compiled):
            patch = ("TorchCompileModel", {"backend": args.backend}) if compiled else None
            prompt = graphs.t2v_prompt(standins["unet"], standins["clip"], width=args.size, height=args.size,
                                       frames=args.frames, seed=seed, steps=args.steps, patch=patch)
            latent, answer = proc.sample(prompt, graphs.SAMPLER, str(work / "captures"))
            return answer["node_seconds"][graphs.SAMPLER], latent

        sample(0, False)                                   # warm-up: loads, encodes the prompts
        first, _ = sample(1, True)                         # compiles
        seconds = {"plain": [], "compiled": []}
        errors = []
        for r in range(args.repeats):
            took, latent = sample(10 + r, True)
            seconds["compiled"].append(took)
            took, plain = sample(10 + r, False)
            seconds["plain"].append(took)
            errors.append(((latent - plain).abs().max() / plain.abs().max()).item())
        counters = proc.call(str(PROBE), "dynamo_counters")
        version = proc.hello.get("version")
    plain, compiled = statistics.median(seconds["plain"]), statistics.median(seconds["compiled"])
    print(f"ComfyUI {version} {args.host_args}, torch {torch.__version__}, fp32 CPU, TorchCompileModel backend "
          f"{args.backend}; stand-in UNet, {args.frames} frames {args.size}x{args.size}, KSampler euler {args.steps} "
          f"steps\n")
    print("| first compiled run s | plain run s (median) | compiled run s (median) | time ratio | "
          "rel err vs plain (max) | graphs compiled | graph breaks |")
    print("|---|---|---|---|---|---|---|")
    breaks = sum(counters["graph_breaks"].values())
    print(f"| {first:.1f} | {plain:.2f} | {compiled:.2f} | {compiled / plain:.2f}x | {max(errors):.1e} | "
          f"{counters['unique_graphs']} | {breaks} |")
    for reason, n in counters["graph_breaks"].items():
        print(f"graph break x{n}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
