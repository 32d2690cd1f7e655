"""Frame batching: peak memory and time of one cfg model evaluation (cond + uncond) for long videos.

Each row runs in a fresh subprocess: build the UNet3D with random weights, run one warm-up window, then one full
evaluation of ``frames`` frames through ``unet3d.video.frame_batching`` (context 24, overlap 8 by default) and, with
``--direct``, the same evaluation without frame batching. Memory:

* CUDA: ``torch.cuda.max_memory_allocated`` over the evaluation (weights included), default config = diffusers'
  UNet3DConditionModel default = Zeroscope v2 576w, fp16, latent 40x72 (320x576 px);
* CPU: peak RSS of the subprocess (weights, interpreter and torch included) and its growth during the evaluation,
  sampled by a thread; default config "tiny" so it runs in minutes on 2 cores.

    python benchmarks/frames.py                                  # GPU if present, else CPU
    python benchmarks/frames.py --device cpu --config tiny --latent 32x32 --direct
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import RssPeak  # noqa: E402
from comfy_runner.offline import plugin_module, sampler_call  # noqa: E402
from unet3d.dtypes import torch_dtype  # noqa: E402
from unet3d.video.folding import frame_layout  # noqa: E402
from unet3d.video.frame_batching import plan_calls  # noqa: E402
from unet3d.video.windows import WindowSettings  # noqa: E402

CONFIGS = {
    "tiny": dict(block_out_channels=(32, 64, 128, 128), layers_per_block=1, attention_head_dim=8,
                 cross_attention_dim=1024, norm_num_groups=32),
    "medium": dict(block_out_channels=(64, 128, 256, 256), cross_attention_dim=1024, attention_head_dim=64),
    "zeroscope": {},  # diffusers' defaults: 320/640/1280/1280, 1024-wide context (Zeroscope v2 576w)
}
TOKENS = 77
MIB = 1 << 20


def build_model(config: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """The UNet as ComfyUI runs it (``nodes/unet_adapter.py``'s ComfyUNet3D), random weights."""
    torch.manual_seed(0)
    model = plugin_module("nodes.unet_adapter").ComfyUNet3D(**CONFIGS[config]).eval()
    return model.to(device=device, dtype=dtype)


def folded_inputs(frames: int, latent, device, dtype, chunks=2):
    """cond + uncond rows of one video in the folded layout, one context row per video."""
    gen = torch.Generator().manual_seed(1)
    h, w = latent
    x = torch.randn(chunks * frames, 4, h, w, generator=gen).to(device, dtype)
    t = torch.full((chunks * frames,), 500.0, device=device)
    context = torch.randn(chunks, TOKENS, 1024, generator=gen).to(device, dtype)
    return x, t, context


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(args) -> dict:
    """One row, in this process: a warm-up window, then the measured evaluation."""
    torch.set_num_threads(args.threads)
    dtype = torch_dtype(args.dtype)
    model = build_model(args.config, args.device, dtype)
    settings = WindowSettings(args.context_length, args.context_overlap)
    wrapper = plugin_module("nodes.frame_batching").FrameBatchingWrapper(settings, args.max_batch_rows)
    x, t, context = folded_inputs(args.frames, args.latent, args.device, dtype)
    windows = settings.windows(args.frames)
    calls = plan_calls(frame_layout(x.shape[0], 2), windows, args.max_batch_rows)
    with torch.inference_mode():
        warm = min(args.frames, args.context_length)
        wx, wt, wc = folded_inputs(warm, args.latent, args.device, dtype)
        sampler_call(model, wx, wt, wc)
        synchronize(args.device)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        with RssPeak() as rss:
            for _ in range(max(args.repeat, 1)):
                start = time.perf_counter()
                out = sampler_call(model, x, t, context, wrapper=None if args.mode == "direct" else wrapper)
                synchronize(args.device)
                times.append(time.perf_counter() - start)
                assert torch.isfinite(out).all()
                del out                              # a repeat must not hold two outputs
    direct = args.mode == "direct"
    row = {"frames": args.frames, "mode": args.mode, "windows": 1 if direct else len(windows),
           "calls": 1 if direct else len(calls), "seconds": min(times)}
    if args.device == "cuda":
        row["peak_bytes"] = torch.cuda.max_memory_allocated()
    else:
        row["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        row["growth_bytes"] = rss.peak - rss.start
    return row


def run_row(args, frames: int, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--frames-one", str(frames), "--mode", mode]
    for name in ("config", "device", "dtype", "context_length", "context_overlap", "max_batch_rows", "threads",
                 "repeat"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    cmd += ["--latent", f"{args.latent[0]}x{args.latent[1]}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"frames": frames, "mode": mode, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(value) -> str:
    return f"{value / MIB:.0f}"


def table(rows, device: str) -> str:
    base = next((r for r in rows if r["mode"] == "windows" and "error" not in r), None)
    heads = ["frames", "windows", "UNet calls", "time s", "s / window", "peak MiB", "peak / 24f"]
    if device == "cpu":
        heads.append("RSS growth MiB")
    heads.append("no batching: peak MiB / time s")
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in (r for r in rows if r["mode"] == "windows"):
        direct = next((d for d in rows if d["mode"] == "direct" and d["frames"] == r["frames"]), None)
        if "error" in r:
            lines.append(f"| {r['frames']} | error: {r['error']} |")
            continue
        cells = [r["frames"], r["windows"], r["calls"], f"{r['seconds']:.2f}", f"{r['seconds'] / r['windows']:.2f}",
                 mib(r["peak_bytes"]), f"{r['peak_bytes'] / base['peak_bytes']:.2f}x"]
        if device == "cpu":
            cells.append(mib(r["growth_bytes"]))
        if direct is None:
            cells.append("-")
        elif "error" in direct:
            cells.append(f"failed ({direct['error'][:40]})")
        else:
            cells.append(f"{mib(direct['peak_bytes'])} / {direct['seconds']:.2f}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", default="24,48,96,192")
    p.add_argument("--device", default="cuda" if cuda else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--config", default=None, choices=sorted(CONFIGS), help="zeroscope on CUDA, tiny on CPU")
    p.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"], help="fp16 on CUDA, fp32 on CPU")
    p.add_argument("--latent", default=None, help="HxW latent size; 40x72 on CUDA, 32x32 on CPU")
    p.add_argument("--context-length", type=int, default=24)
    p.add_argument("--context-overlap", type=int, default=8)
    p.add_argument("--max-batch-rows", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared box)")
    p.add_argument("--repeat", type=int, default=1, help="timed evaluations per row; the fastest is reported")
    p.add_argument("--direct", action="store_true", help="also measure each length without frame batching")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--frames-one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="windows", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    gpu = args.device == "cuda"
    args.config = args.config or ("zeroscope" if gpu else "tiny")
    args.dtype = args.dtype or ("fp16" if gpu else "fp32")
    args.latent = tuple(int(v) for v in (args.latent or ("40x72" if gpu else "32x32")).split("x"))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        args.frames = args.frames_one
        print(json.dumps(measure(args)))
        return
    frame_counts = [int(v) for v in args.frames.split(",")]
    print(f"# device={args.device} config={args.config} dtype={args.dtype} latent={args.latent[0]}x{args.latent[1]} "
          f"context={args.context_length}/{args.context_overlap} max_batch_rows={args.max_batch_rows} "
          f"cfg rows=2 (cond+uncond)", flush=True)
    rows = []
    for frames in frame_counts:
        for mode in ("windows", "direct") if args.direct else ("windows",):
            rows.append(run_row(args, frames, mode))
            print(f"# {json.dumps(rows[-1])}", flush=True)
    print(table(rows, args.device))


if __name__ == "__main__":
    main()
