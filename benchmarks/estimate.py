"""The memory estimate (``unet3d.memory.estimate``) against real peaks of one UNet call.

CPU (default): each row runs in a fresh subprocess that builds the model with random weights, warms the kernels up on
a tiny input, and samples its RSS during one call (``RssPeak``); the figure is the growth (activations + workspace).
glibc's heap caching is switched off in the worker (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave RSS at once,
as on a GPU ``max_memory_allocated`` counts live tensors and not the allocator's cache.
GPU (``--device cuda``): ``torch.cuda.max_memory_allocated`` growth during the call, fp16, for the Zeroscope 576w
config (diffusers defaults) at 24 frames 576x320 (latent 40x72), cfg batch 2.

    python benchmarks/estimate.py                 # CPU table (10-20 minutes on 2 shared cores)
    python benchmarks/estimate.py --device cuda   # on a GPU machine

Exit status 1 if a row is off by more than 25%.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import RssPeak, run_json, table  # noqa: E402

QUARTER = dict(block_out_channels=(80, 160, 320, 320), attention_head_dim=16, norm_num_groups=16,
               cross_attention_dim=1024)
ZEROSCOPE = {}  # the diffusers defaults = ModelScope 1.7B / Zeroscope v2 576w / XL
TOLERANCE = 0.25

# name -> (config, frames, latent h, latent w, options for unet3d.memory.estimate.MemoryOptions / the call)
CPU_ROWS = {
    "quarter 16f 40x72": (QUARTER, 16, 40, 72, {}),
    "quarter 16f 32x32": (QUARTER, 16, 32, 32, {}),
    "quarter 16f 32x32 ff_chunk 4/seq": (QUARTER, 16, 32, 32, {"ff_chunk": (4, 1)}),
    "quarter 16f 40x72 slice max": (QUARTER, 16, 40, 72, {"attention_slice": "max"}),
    "quarter 16f 24x40 matmul attention": (QUARTER, 16, 24, 40, {"attention": "materialized"}),
    "quarter 16f 24x40 matmul + slice auto": (QUARTER, 16, 24, 40, {"attention": "materialized",
                                                                    "attention_slice": "auto"}),
    "quarter 48f 40x72 windows 16 cap 16 rows": (QUARTER, 48, 40, 72, {"context_length": 16, "max_batch_rows": 16}),
    "quarter 24f 32x32 all three": (QUARTER, 24, 32, 32, {"ff_chunk": (4, 1), "attention_slice": "auto",
                                                          "context_length": 16, "max_batch_rows": 16}),
}
GPU_ROWS = {
    "zeroscope fp16 24f 40x72": (ZEROSCOPE, 24, 40, 72, {}),
    "zeroscope ... ff_chunk 1/seq": (ZEROSCOPE, 24, 40, 72, {"ff_chunk": (1, 1)}),
    "zeroscope ... slice auto": (ZEROSCOPE, 24, 40, 72, {"attention_slice": "auto"}),
    "zeroscope ... matmul + slice auto": (ZEROSCOPE, 24, 40, 72, {"attention": "materialized",
                                                                  "attention_slice": "auto"}),
    "zeroscope ... windows 16 cap 16 rows": (ZEROSCOPE, 24, 40, 72, {"context_length": 16, "max_batch_rows": 16}),
}


def estimated_bytes(config, frames, h, w, options, dtype) -> int:
    from unet3d.memory.estimate import MemoryOptions, Workload, estimate
    opts = MemoryOptions(weight_dtype=dtype, **options)
    return estimate(config, Workload(frames, h, w, videos=1, cond_chunks=2), opts).activation_bytes


def _call(model, x, t, context, options):
    """One sampler step's UNet work on the path ComfyUI runs (the plugin's ComfyUNet3D, through its frame-batching
    wrapper when windows / a row cap are set), with this pack's per-call settings as its patch nodes write them."""
    from comfy_runner.offline import plugin_module, sampler_call
    from unet3d.video.windows import WindowSettings
    ours = {}
    if options.get("attention_slice") is not None:
        ours["attention_slice"] = options["attention_slice"]
    if options.get("ff_chunk") is not None:
        ours["ff_chunk"] = tuple(options["ff_chunk"])
    b, c, f, h, w = x.shape
    rows = x.transpose(1, 2).reshape(b * f, c, h, w)
    wrapper = None
    if options.get("context_length"):
        settings = WindowSettings(options["context_length"], 8)
        wrapper = plugin_module("nodes.frame_batching").FrameBatchingWrapper(settings,
                                                                             options.get("max_batch_rows", 0))
    return sampler_call(model, rows, t.repeat(b * f), context, wrapper=wrapper, transformer_options={"unet3d": ours})


def measure_row(name: str, device: str) -> dict:
    """Worker: build, warm up, measure one call. Prints JSON."""
    import torch

    from comfy_runner.offline import plugin_module
    from unet3d.network.attention import bmm_attention
    rows = CPU_ROWS if device == "cpu" else GPU_ROWS
    config, frames, h, w, options = rows[name]
    dtype = torch.float32 if device == "cpu" else torch.float16
    torch.manual_seed(0)
    attention = bmm_attention if options.get("attention") == "materialized" else None
    model = plugin_module("nodes.unet_adapter").ComfyUNet3D(**config, attention=attention)
    model = model.to(device=device, dtype=dtype).eval()
    cross = config.get("cross_attention_dim", 1024)

    def inputs(f, hh, ww):
        return (torch.randn(2, 4, f, hh, ww, device=device, dtype=dtype), torch.tensor([500], device=device),
                torch.randn(2, 77, cross, device=device, dtype=dtype))
    with torch.no_grad():
        _call(model, *inputs(4, 16, 16), {k: v for k, v in options.items() if k not in ("context_length",)})
        args = inputs(frames, h, w)
        if device == "cpu":
            with RssPeak() as peak:
                _call(model, *args, options)
            measured = peak.growth
        else:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            _call(model, *args, options)
            torch.cuda.synchronize()
            measured = torch.cuda.max_memory_allocated() - base
    dname = "fp32" if device == "cpu" else "fp16"
    return {"name": name, "measured": measured, "estimated": estimated_bytes(config, frames, h, w, options, dname)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.worker:
        import torch
        torch.set_num_threads(args.threads)
        print(json.dumps(measure_row(args.worker, args.device)))
        return 0
    rows = CPU_ROWS if args.device == "cpu" else GPU_ROWS
    names = [n for n in args.rows.split(",") if n] or list(rows)
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0",
           "PYTHONPATH": str(Path(__file__).parents[1])}
    results, worst = [], 0.0
    for name in names:
        r = run_json([__file__, "--device", args.device, "--threads", str(args.threads), "--worker", name], env=env)
        ratio = r["estimated"] / r["measured"]
        worst = max(worst, abs(ratio - 1))
        results.append([name, f"{r['measured'] / 2**20:.0f}", f"{r['estimated'] / 2**20:.0f}", f"{ratio:.2f}",
                         "ok" if abs(ratio - 1) <= TOLERANCE else "OFF"])
        print(f"{name}: measured {r['measured'] / 2**20:.0f} MiB, estimated {r['estimated'] / 2**20:.0f} MiB",
              file=sys.stderr, flush=True)
    print(table(results, ["row", "measured MiB", "estimated MiB", "est/meas", "within 25%"]))
    print(f"device {args.device}; worst deviation {worst:.0%}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
