"""Our UNet3D forward against diffusers' on identical weights and inputs (fp32, CPU).

Time: both models live in one process and run interleaved, alternating which goes first; the median of N runs
each.
Peak memory: a fresh subprocess per implementation builds the model, loads the same weights, and runs one forward;
the figure is the growth of RSS during that forward, sampled by a thread (activations + workspace; weights do
not count).

``--busy-cores N`` times both while N other processes spin on a core each, as on a shared machine (peak memory is
measured without them).

    python benchmarks/forward.py [--runs 7] [--settings tiny,medium] [--busy-cores 0]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import SETTINGS, RssPeak, run_json, table  # noqa: E402


def build(impl: str, config: dict, meta: bool = False):
    if impl == "ours":
        from unet3d import UNet3DConditionModel
    else:
        from diffusers import UNet3DConditionModel
    if meta:
        with torch.device("meta"):
            return UNet3DConditionModel(**config).eval()
    return UNet3DConditionModel(**config).eval()


def make_inputs(shape, config, seed=0):
    b, f, h, w, tokens = shape
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, f, h, w, generator=gen), torch.tensor([500]),
            torch.randn(b, tokens, config["cross_attention_dim"], generator=gen))


def time_pair(name: str, runs: int) -> dict:
    config, shape = SETTINGS[name]
    torch.manual_seed(0)
    theirs = build("diffusers", config)
    ours = build("ours", config)
    ours.load_state_dict(theirs.state_dict())
    args = make_inputs(shape, config)
    times = {"ours": [], "diffusers": []}
    with torch.no_grad():
        err = ((ours(*args).sample - theirs(*args).sample).abs().max() / theirs(*args).sample.abs().max()).item()
        pair = [("ours", ours), ("diffusers", theirs)]
        for i in range(runs):
            for impl, model in (pair if i % 2 == 0 else pair[::-1]):  # alternate who goes first (no position bias)
                start = time.perf_counter()
                model(*args)
                times[impl].append(time.perf_counter() - start)
    return {"ours": statistics.median(times["ours"]), "diffusers": statistics.median(times["diffusers"]),
            "rel_err": err}


def memory_child(impl: str, name: str, weights: str) -> None:
    config, shape = SETTINGS[name]
    # Built on meta and assigned from an mmap'd file: one copy of the weights, so the RSS high-water mark before
    # the forward is the weights alone and the forward's growth is its own activations.
    model = build(impl, config, meta=True)
    model.load_state_dict(torch.load(weights, weights_only=True, mmap=True), assign=True)
    args = make_inputs(shape, config)
    with torch.no_grad():
        model(*make_inputs((1, 2, 8, 8, 4), config))  # warm-up at a tiny size: lazy init, thread pools
        with RssPeak() as peak:
            model(*args)
    print(json.dumps({"peak_growth": peak.growth}))


def memory_pair(name: str) -> dict:
    config, _ = SETTINGS[name]
    with tempfile.TemporaryDirectory() as tmp:
        weights = str(Path(tmp) / "w.pt")
        torch.manual_seed(0)
        torch.save(build("diffusers", config).state_dict(), weights)
        return {impl: run_json(["benchmarks/forward.py", "--child", impl, name, weights])["peak_growth"]
                for impl in ("ours", "diffusers")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--settings", default="tiny,medium")
    parser.add_argument("--busy-cores", type=int, default=0, choices=range(0, 65), metavar="N",
                        help="other processes spinning while the times are taken (0-64)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        return memory_child(*opts.child)
    rows = []
    for name in opts.settings.split(","):
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(opts.busy_cores)]
        try:
            t = time_pair(name, opts.runs)
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
        m = memory_pair(name)
        rows.append([name, f"{t['ours'] * 1000:.1f}", f"{t['diffusers'] * 1000:.1f}",
                     f"{t['ours'] / t['diffusers']:.2f}x", f"{m['ours'] / 2**20:.0f}", f"{m['diffusers'] / 2**20:.0f}",
                     f"{m['ours'] / max(m['diffusers'], 1):.2f}x", f"{t['rel_err']:.1e}"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU, median of {opts.runs}, "
          f"{opts.busy_cores} busy cores")
    print(table(rows, ["setting", "ours ms", "diffusers ms", "time ratio", "ours peak MiB", "diffusers peak MiB",
                       "memory ratio", "rel err"]))


if __name__ == "__main__":
    main()
