"""torch.compile on the pure model: compile time and steady-state speed against the eager forward (fp32, CPU).

The model compiles as one graph (``tests/test_compile.py`` checks that there are no graph breaks); this prints what
compiling costs and buys with torch's default backend (inductor). Eager and compiled forwards run interleaved in one
process on the same weights and inputs; the relative error compares their outputs.

    python benchmarks/compile.py [--settings tiny,medium] [--runs 5] [--mode default]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import SETTINGS, table  # noqa: E402
from unet3d import UNet3DConditionModel  # noqa: E402


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def run_setting(name: str, runs: int, mode: str):
    config, (videos, frames, height, width, tokens) = SETTINGS[name]
    torch.manual_seed(0)
    model = UNet3DConditionModel(**config).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(videos, 4, frames, height, width, generator=gen)
    context = torch.randn(videos, tokens, config["cross_attention_dim"], generator=gen)
    t = torch.tensor([500.0])
    eager = lambda: model(x, t, context).sample  # noqa: E731
    torch._dynamo.reset()
    compiled_model = torch.compile(model, mode=None if mode == "default" else mode)
    compiled = lambda: compiled_model(x, t, context).sample  # noqa: E731
    with torch.no_grad():
        eager()
        compile_seconds, _ = timed(compiled)
        times = {"eager": [], "compiled": []}
        for r in range(runs):
            for kind, fn in (("eager", eager), ("compiled", compiled))[::1 if r % 2 == 0 else -1]:
                seconds, out = timed(fn)
                times[kind].append(seconds)
                times[kind + " out"] = out
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    ref = times["eager out"]
    err = ((times["compiled out"] - ref).abs().max() / ref.abs().max()).item()
    return [name, f"{compile_seconds:.1f}", f"{e * 1000:.1f}", f"{c * 1000:.1f}", f"{c / e:.2f}x", f"{err:.1e}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="tiny,medium")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mode", default="default", choices=["default", "reduce-overhead", "max-autotune"])
    opts = parser.parse_args()
    rows = [run_setting(name, opts.runs, opts.mode) for name in opts.settings.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU, torch.compile mode {opts.mode}, "
          f"median of {opts.runs} interleaved runs")
    print(table(rows, ["setting", "first call (compile) s", "eager ms", "compiled ms", "time ratio", "rel err"]))


if __name__ == "__main__":
    main()
