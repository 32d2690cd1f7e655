"""Step cache (``unet3d.network.step_cache``): seconds per video and the change of the result, over whole sampler runs.

A direct sampler loop over the pure model (no ComfyUI): Euler (k-diffusion's ``sample_euler``) on the noise levels of
the models' scaled-linear DDPM schedule (ModelScope / Zeroscope, as ComfyUI's EPS model), ``--steps`` evenly spaced
timesteps, classifier-free guidance with cond and uncond stacked in one call (batch 2). Every run starts from the same
noise with the same weights; ``interval`` 1 is the plain model. The relative error is that of the final latent against
the plain run (max |a - b| / max |b|). Random weights: the error says how far the cache moves the sampler, not how a
video looks.

    python benchmarks/step_cache.py [--settings tiny,medium] [--steps 20] [--intervals 1,2,3,5] [--repeats 3]
                                    [--depths 0,1] [--reuse-temporal-in]

The cost of one cached evaluation against a full one is printed too (median over the run's calls of each kind).
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
from unet3d.network.step_cache import StepCache  # noqa: E402

# latent (videos, frames, height, width, tokens) per setting: medium at 8 frames of 32x48 keeps 4 runs of 20 steps
# within minutes on 2 cores
SHAPES = {"tiny": (1, 8, 16, 16, 8), "medium": (1, 8, 32, 48, 77), "zeroscope-small": (1, 8, 18, 32, 77)}
# the real Zeroscope v2 576w config (diffusers' defaults, 1.41 B parameters) at a CPU-sized 8 frames of 256x144:
# its transformer_in is narrow against its 320 channels, as on a GPU at full size (medium's is 8x its channels)
CONFIGS = {**{name: config for name, (config, _) in SETTINGS.items()}, "zeroscope-small": {}}
CFG_SCALE = 9.0


def ddpm_sigmas(steps: int, start=0.00085, end=0.012, train_steps=1000):
    """(sigmas for the run + a final 0, the matching timesteps): scaled-linear betas, evenly spaced timesteps."""
    betas = torch.linspace(start ** 0.5, end ** 0.5, train_steps, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    table_sigmas = ((1 - alphas) / alphas) ** 0.5
    timesteps = torch.linspace(train_steps - 1, 0, steps).round().long()
    return torch.cat([table_sigmas[timesteps], torch.zeros(1)]).float(), timesteps


def sample(model, noise, cond, uncond, steps, cache=None, timings=None):
    """Euler with cfg; ``timings`` collects (kind, seconds) per model call."""
    sigmas, timesteps = ddpm_sigmas(steps)
    x = noise * sigmas[0]
    context = torch.cat([cond, uncond])
    for i in range(steps):
        sigma, t = sigmas[i], timesteps[i]
        plan = None if cache is None else cache.plan(float(sigma), last=i == steps - 1)
        x_in = torch.cat([x, x]) / (sigma ** 2 + 1) ** 0.5
        start = time.perf_counter()
        eps = model(x_in, t, context, call_options={"step_cache": plan}).sample
        if timings is not None:
            timings.append(("cached" if plan is not None and plan.reuse else "full", time.perf_counter() - start))
        eps_cond, eps_uncond = eps.chunk(2)
        eps = eps_uncond + CFG_SCALE * (eps_cond - eps_uncond)
        x = x + eps * (sigmas[i + 1] - sigma)     # Euler: d = (x - denoised) / sigma = eps
    return x


def run_setting(name: str, steps: int, intervals, repeats: int, depth: int = 0, reuse_temporal_in: bool = False):
    config = CONFIGS[name]
    videos, frames, height, width, tokens = SHAPES[name]
    torch.manual_seed(0)
    model = UNet3DConditionModel(**config).eval()
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(videos, 4, frames, height, width, generator=gen)
    cond = torch.randn(videos, tokens, model.config.cross_attention_dim, generator=gen)
    uncond = torch.randn(videos, tokens, model.config.cross_attention_dim, generator=gen)
    results = {n: {"seconds": [], "calls": []} for n in intervals}
    with torch.no_grad():
        sample(model, noise, cond, uncond, 2)   # warm-up: thread pools, lazy init
        for r in range(repeats):
            order = list(intervals) if r % 2 == 0 else list(reversed(intervals))   # interleaved, alternating order
            for n in order:
                timings = []
                start = time.perf_counter()
                cache = StepCache(n, depth, reuse_temporal_in=reuse_temporal_in)
                latent = sample(model, noise, cond, uncond, steps, cache, timings)
                results[n]["seconds"].append(time.perf_counter() - start)
                results[n]["calls"].extend(timings)
                results[n]["latent"] = latent
    plain = results[intervals[0]]
    rows = []
    for n in intervals:
        res = results[n]
        seconds = statistics.median(res["seconds"])
        full = [s for kind, s in res["calls"] if kind == "full"]
        cached = [s for kind, s in res["calls"] if kind == "cached"]
        cost = f"{statistics.median(cached) / statistics.median(full):.2f}" if cached else "-"
        err = ((res["latent"] - plain["latent"]).abs().max() / plain["latent"].abs().max()).item()
        rows.append([name, depth, "yes" if reuse_temporal_in else "no", n,
                     sum(k == "full" for k, _ in res["calls"]) // repeats,
                     sum(k == "cached" for k, _ in res["calls"]) // repeats, f"{seconds:.2f}",
                     f"{statistics.median(plain['seconds']) / seconds:.2f}x", cost, f"{err:.1e}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="tiny,medium")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--intervals", default="1,2,3,5")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depths", default="0", help="fresh layers of the last up block on cached calls (0 = all)")
    parser.add_argument("--reuse-temporal-in", action="store_true",
                        help="cached calls also add transformer_in's kept delta instead of running it")
    opts = parser.parse_args()
    intervals = [int(n) for n in opts.intervals.split(",")]
    if intervals[0] != 1:
        intervals = [1] + intervals
    rows = []
    for name in opts.settings.split(","):
        for depth in (int(d) for d in opts.depths.split(",")):
            rows += run_setting(name, opts.steps, intervals, opts.repeats, depth, opts.reuse_temporal_in)
            print(f"done: {rows[-len(intervals):]}", file=sys.stderr, flush=True)   # long runs: partial results
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU, Euler {opts.steps} steps, cfg "
          f"batch 2, median of {opts.repeats} interleaved runs")
    print(table(rows, ["setting", "depth", "reuse temporal_in", "interval", "full calls", "cached calls", "s / video",
                       "speed-up", "cached / full call", "rel err of final latent"]))


if __name__ == "__main__":
    main()
