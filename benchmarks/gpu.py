"""Seconds per sampler step and peak memory of the Zeroscope 576w UNet on a GPU, with each memory / speed option.

Random weights in the real Zeroscope v2 576w config (diffusers' default UNet3D config, 1.41 B parameters), built
straight on the device in ``--dtype`` (fp16 by default); 24 frames of 576x320 (latent 40x72), cond + uncond in one
batch (2 videos), 77 tokens. Every row runs the model on the path ComfyUI runs (the plugin's ``ComfyUNet3D`` with this
pack's per-call options in ``transformer_options``, through the frame-batching wrapper where that row uses it,
``comfy_runner.offline.sampler_call``); a step is one such call, and a step-cache row averages a whole cycle of
``interval`` steps (one full, the others cached).

Columns: median seconds per step over ``--steps`` timed steps after one warm-up; peak memory of a step above what was
allocated before it (``torch.cuda.max_memory_allocated``; on CPU the growth of RSS, ``benchmarks._common.RssPeak``).
Then the convolution-heavy part (every ResnetBlock2D and temporal convolution layer, timed with CUDA events around
each module, FLOPs from ``torch.utils.flop_counter``): its achieved TFLOP/s, as a fraction of a dense matmul of the
same dtype measured on the same device and, for the GPUs in ``NOMINAL_TFLOPS``, of the vendor's dense peak.

    python benchmarks/gpu.py                       # CUDA, Zeroscope 576w, fp16, 24 frames 576x320
    python benchmarks/gpu.py --device cpu --config tiny --dtype fp32 --frames 8 --width 128 --height 128 --steps 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import MEDIUM, TINY, RssPeak, table  # noqa: E402
from unet3d.dtypes import COMPUTE_DTYPES, by_name  # noqa: E402

CONFIGS = {"zeroscope": {}, "medium": MEDIUM, "tiny": TINY}
# name -> (per-call settings under transformer_options["unet3d"], frame windows (length, overlap) or None, interval)
ROWS = {
    "plain": ({}, None, 1),
    "attention slicing auto": ({"attention_slice": "auto"}, None, 1),
    "attention slicing max": ({"attention_slice": "max"}, None, 1),
    "ff chunking 1/sequence": ({"ff_chunk": (1, 1)}, None, 1),
    "frame batching 16/8": ({}, (16, 8), 1),
    "step cache interval 2": ({}, None, 2),
    "step cache interval 3": ({}, None, 3),
    "step cache 3 + slicing auto + chunking": ({"attention_slice": "auto", "ff_chunk": (1, 1)}, None, 3),
    "step cache 3 + frame batching 16/8": ({}, (16, 8), 3),
}
# dense fp16/bf16 tensor-core peak (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name()
NOMINAL_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 PCIe": 756.0, "A100": 312.0, "L40S": 362.1,
                  "RTX 4090": 165.2, "RTX 3090": 71.0, "A10G": 70.0, "L4": 121.0, "T4": 65.0}
SIGMAS = (14.6, 9.7, 6.6, 4.5, 3.1, 2.1, 1.4, 0.9, 0.6, 0.3)   # falling noise levels for the sampler steps


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Peak:
    """Peak memory above the start of a ``with`` block: CUDA allocator statistics, or RSS growth on CPU."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        if self.device.startswith("cuda"):
            synchronize(self.device)
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.rss = RssPeak().__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.rss.__exit__(*exc)
            self.bytes = self.rss.growth


def build(config_name: str, device: str, dtype: torch.dtype):
    from comfy_runner.offline import plugin_module
    torch.manual_seed(0)
    model = plugin_module("nodes.unet_adapter").ComfyUNet3D(**CONFIGS[config_name], device=device, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval()


def step_call(model, x, context, settings, windows, cache, sigma, t):
    """One sampler step's model call on the rows ``x`` (cond + uncond videos of frames)."""
    from comfy_runner.offline import plugin_module, sampler_call
    from unet3d.video.windows import WindowSettings
    ours = dict(settings)
    if cache is not None:
        ours["step_cache"] = cache
    options = {"unet3d": ours, "sigmas": torch.full((x.shape[0],), sigma, device=x.device)}
    wrapper = None
    if windows is not None:
        wrapper = plugin_module("nodes.frame_batching").FrameBatchingWrapper(WindowSettings(*windows), 0)
    return sampler_call(model, x, t, context, wrapper=wrapper, transformer_options=options)


def measure_row(model, row: str, inputs, steps: int, device: str):
    from comfy_runner.offline import plugin_module
    StepCache = plugin_module("unet3d.network.step_cache").StepCache   # the class the plugin's modules check
    settings, windows, interval = ROWS[row]
    x, t, context = inputs
    cache = StepCache(interval) if interval > 1 else None
    calls = max(steps, 1) * interval
    times, peak = [], 0
    with torch.no_grad():
        step_call(model, x, context, settings, windows, cache, 20.0, t)          # warm-up (and a new run)
        for i in range(calls):
            with Peak(device) as p:
                start = time.perf_counter()
                step_call(model, x, context, settings, windows, cache, SIGMAS[i % len(SIGMAS)] / (1 + i // 10), t)
                synchronize(device)
                times.append(time.perf_counter() - start)
            peak = max(peak, p.bytes)
    # a step-cache row: the mean over whole cycles of `interval` steps
    per_step = [sum(times[i:i + interval]) / interval for i in range(0, len(times), interval)]
    return statistics.median(per_step), peak


def matmul_tflops(device: str, dtype: torch.dtype, size: int) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    runs = 5
    start = time.perf_counter()
    for _ in range(runs):
        a @ b
    synchronize(device)
    return 2 * size ** 3 * runs / (time.perf_counter() - start) / 1e12


def conv_part(model, inputs, device: str):
    """(TFLOP/s achieved in the resnet blocks and temporal convolutions, their share of the forward's time)."""
    from torch.utils.flop_counter import FlopCounterMode
    modules = [m for name, m in model.named_modules() if _is_layer(name)]
    x, t, context = inputs
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        step_call(model, x, context, {}, None, None, 10.0, t)
    flops = sum(sum(counts.values()) for name, counts in counter.get_flop_counts().items() if _is_layer(name))
    marks = []

    def pre(module, args):
        marks.append([_event(device), None])

    def post(module, args, out):
        marks[-1][1] = _event(device)
    handles = [h for m in modules for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        with torch.no_grad():
            synchronize(device)
            start = time.perf_counter()
            step_call(model, x, context, {}, None, None, 10.0, t)
            synchronize(device)
            total = time.perf_counter() - start
    finally:
        for h in handles:
            h.remove()
    seconds = sum(_elapsed(a, b) for a, b in marks)
    return flops / seconds / 1e12, seconds / total


def _is_layer(name: str) -> bool:
    """A module path that ends in ``resnets.<i>`` or ``temp_convs.<i>`` (one conv-heavy layer)."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-2] in ("resnets", "temp_convs") and parts[-1].isdigit()


def _event(device: str):
    if device.startswith("cuda"):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def _elapsed(a, b) -> float:
    if isinstance(a, float):
        return b - a
    b.synchronize()
    return a.elapsed_time(b) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp16", choices=COMPUTE_DTYPES)
    parser.add_argument("--config", default="zeroscope", choices=list(CONFIGS))
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (cycles for step-cache rows) per row")
    parser.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    for name, value in (("frames", opts.frames), ("width", opts.width), ("height", opts.height)):
        if not 1 <= value <= 4096 or (name != "frames" and value % 8):
            raise SystemExit(f"--{name} {value}: frames 1-4096, width and height multiples of 8 up to 4096")
    dtype = by_name(opts.dtype).torch
    device = opts.device
    model = build(opts.config, device, dtype)
    cross = model.config.cross_attention_dim
    gen = torch.Generator().manual_seed(0)
    rows_in = 2 * opts.frames
    inputs = (torch.randn(rows_in, 4, opts.height // 8, opts.width // 8, generator=gen).to(device, dtype),
              torch.full((rows_in,), 500.0, device=device),
              torch.randn(2, 77, cross, generator=gen).to(device, dtype))
    names = [n for n in opts.rows.split(",") if n] or list(ROWS)
    rows = []
    for name in names:
        seconds, peak = measure_row(model, name, inputs, opts.steps, device)
        rows.append([name, f"{seconds:.3f}", f"{peak / 2**30:.2f}"])
        print(f"{name}: {seconds:.3f} s/step, peak {peak / 2**30:.2f} GiB", file=sys.stderr, flush=True)
    title = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{title}; torch {torch.__version__}; {opts.config} config, {opts.dtype}, {opts.frames} frames "
          f"{opts.width}x{opts.height}, cond + uncond batch 2")
    print(table(rows, ["row", "s / step", "peak GiB above weights"]))
    achieved, share = conv_part(model, inputs, device)
    measured = matmul_tflops(device, dtype, 8192 if device.startswith("cuda") else 1024)
    nominal = next((v for k, v in NOMINAL_TFLOPS.items() if k in title), None)
    line = (f"convolution-heavy part (resnets + temporal convs, {share:.0%} of a plain step): {achieved:.3g} TFLOP/s "
            f"= {achieved / measured:.0%} of a dense {opts.dtype} matmul here ({measured:.3g} TFLOP/s)")
    print(line + (f", {achieved / nominal:.0%} of the nominal {nominal:.0f} TFLOP/s" if nominal else ""))


if __name__ == "__main__":
    main()
