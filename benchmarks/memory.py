"""Peak memory of one UNet3D forward with attention slicing / feed-forward chunking (set per call with
``call_options``, as the ComfyUI patch nodes do).

CPU (always): the medium config (block_out_channels 64/128/256/256, cross_attention_dim 1024, head size 64), fp32,
16 frames, 40x72 latent, 77 tokens, random weights. Each row runs in a fresh subprocess that builds the model, runs
one warm-up forward at a small size, then measures the growth of resident memory (RSS) over one forward, sampled by
a thread every 0.5 ms (``benchmarks._common.RssPeak``). The subprocess sets ``MALLOC_MMAP_THRESHOLD_=65536`` so
glibc serves every tensor-sized block with mmap and unmaps it when freed: RSS then follows live tensor memory
instead of the allocator's high-water mark. Weights are loaded before the measurement and do not count.

GPU (when ``torch.cuda.is_available()``): the Zeroscope 576w config (diffusers' default UNet3D config), random
weights, fp16, 24 frames, 40x72 latent (320x576 px), batch 2 (cond + uncond), 77 tokens;
``torch.cuda.max_memory_allocated`` minus the memory allocated before the forward (activations only).

    python benchmarks/memory.py [--device cpu|cuda|all] [--attention sdpa|bmm]

``--attention bmm`` uses the explicit softmax(QK^T)V core (diffusers' AttnProcessor, ComfyUI's split/sub-quadratic
fallbacks behave alike); the default is torch's SDPA, which on CPU already avoids the full score matrix.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import MEDIUM, RssPeak, run_json, table  # noqa: E402

ROWS = {  # name -> call_options
    "none": {},
    "slicing auto": {"attention_slice": "auto"},
    "slicing max": {"attention_slice": "max"},
    "chunking (1, sequence)": {"ff_chunk": (1, 1)},
    "slicing max + chunking": {"attention_slice": "max", "ff_chunk": (1, 1)},
}
CPU_SHAPE = (1, 16, 40, 72, 77)     # batch, frames, height, width, tokens
GPU_SHAPE = (2, 24, 40, 72, 77)


def _inputs(shape, dim, dtype, device):
    b, f, h, w, tokens = shape
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(b, 4, f, h, w, generator=gen).to(device, dtype)
    context = torch.randn(b, tokens, dim, generator=gen).to(device, dtype)
    return sample, context


def _options(row, attention):
    ours = dict(ROWS[row])
    if attention == "bmm":
        from unet3d.network.attention import bmm_attention
        ours["attention_fn"] = bmm_attention
    return ours


def measure_cpu(row: str, attention: str) -> dict:
    from unet3d import UNet3DConditionModel
    torch.manual_seed(0)
    model = UNet3DConditionModel(**MEDIUM).eval()
    options = _options(row, attention)
    with torch.inference_mode():
        small = _inputs((1, 2, 8, 8, 77), MEDIUM["cross_attention_dim"], torch.float32, "cpu")
        model(*small[:1], 500, small[1], call_options=options)        # warm-up: kernels, thread pools
        sample, context = _inputs(CPU_SHAPE, MEDIUM["cross_attention_dim"], torch.float32, "cpu")
        with RssPeak() as peak:
            out = model(sample, 500, context, call_options=options).sample
        del out
    return {"peak_bytes": peak.growth}


def measure_cuda(row: str, attention: str) -> dict:
    from unet3d import UNet3DConditionModel
    torch.manual_seed(0)
    model = UNet3DConditionModel().to("cuda", torch.float16).eval()      # diffusers defaults = Zeroscope 576w
    options = _options(row, attention)
    sample, context = _inputs(GPU_SHAPE, 1024, torch.float16, "cuda")
    with torch.inference_mode():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = model(sample, 500, context, call_options=options).sample
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del out
    return {"peak_bytes": peak}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--attention", choices=["sdpa", "bmm"], default="sdpa")
    p.add_argument("--one", nargs=2, metavar=("DEVICE", "ROW"), help=argparse.SUPPRESS)  # subprocess entry
    args = p.parse_args()
    if args.one:
        device, row = args.one
        result = (measure_cpu if device == "cpu" else measure_cuda)(row, args.attention)
        print(json.dumps(result))
        return
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        print("no CUDA device: GPU rows skipped", file=sys.stderr)
        devices.remove("cuda")
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for device in devices:
        rows, base = [], None
        for row in ROWS:
            peak = run_json([__file__, "--one", device, row, "--attention", args.attention], env=env)["peak_bytes"]
            base = peak if base is None else base
            rows.append([row, f"{peak / 2**20:,.0f}", f"{100 * (1 - peak / base):.0f}%"])
        what = ("CPU fp32, medium config, 1x16 frames, 40x72 latent: peak RSS growth" if device == "cpu" else
                "CUDA fp16, Zeroscope 576w config, 2x24 frames, 40x72 latent: max_memory_allocated growth")
        print(f"\n{what} (attention core: {args.attention})")
        print(table(rows, ["setting", "peak MiB", "saved vs none"]))


if __name__ == "__main__":
    main()
