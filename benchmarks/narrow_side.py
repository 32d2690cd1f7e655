"""What computing ``transformer_in`` on its narrow side saves (``unet3d/network/narrow_side.py``), fp32 CPU.

For each setting it times the layer alone (random weights, every LayerNorm affine random too) and, for ``medium``,
the whole forward of ``benchmarks/forward.py``'s medium row: with the fold, and on the plain path, which a no-op
forward hook on ``attn1.to_q`` selects (the fold never bypasses a hooked layer). Runs are interleaved, alternating
which goes first; medians. ``rel err`` is the fold's output against the plain path's.

    python benchmarks/narrow_side.py [--runs 5] [--settings medium,zeroscope] [--no-forward]
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

# name -> (first level width, its head size, frames, height, width): transformer_in is 8 heads of that head size
LAYERS = {
    "medium": (64, 64, 16, 40, 72),         # benchmarks/forward.py's medium row: 64 -> 512 wide
    "zeroscope": (320, 64, 16, 20, 36),     # Zeroscope v2 576w: 320 -> 512 wide (a quarter of 576x320's latent)
    "tiny": (32, 8, 4, 8, 8),               # the test's size
}


class PlainPath:
    """A no-op hook on ``attn1.to_q`` of a temporal transformer, for the ``with`` block: the plain path runs."""

    def __init__(self, transformer):
        self.layer = transformer.transformer_blocks[0].attn1.to_q

    def __enter__(self):
        self.handle = self.layer.register_forward_hook(lambda *args: None)

    def __exit__(self, *exc):
        self.handle.remove()


def interleaved(run, transformer, runs: int):
    """(median seconds with the fold, on the plain path, rel err of the fold's output)."""
    times = {True: [], False: []}
    with torch.no_grad():
        folded = run()
        with PlainPath(transformer):
            plain = run()
        for i in range(runs):
            for fold in ((True, False) if i % 2 == 0 else (False, True)):
                start = time.perf_counter()
                if fold:
                    run()
                else:
                    with PlainPath(transformer):
                        run()
                times[fold].append(time.perf_counter() - start)
    err = ((folded - plain).abs().max() / plain.abs().max()).item()
    return statistics.median(times[True]), statistics.median(times[False]), err


def randomize_norms_(module: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, torch.nn.LayerNorm):
                norm.weight.copy_(1 + 0.2 * torch.randn(norm.weight.shape, generator=gen))
                norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, generator=gen))


def layer_row(name: str, runs: int) -> list:
    from unet3d.network.ops import torch_ops
    from unet3d.network.transformer import TransformerTemporalModel
    width, head_dim, frames, height, w = LAYERS[name]
    torch.manual_seed(0)
    layer = TransformerTemporalModel(8, head_dim, width, 32, operations=torch_ops).eval()
    randomize_norms_(layer)
    x = torch.randn(frames, width, height, w)
    fold, plain, err = interleaved(lambda: layer(x, frames), layer, runs)
    return [f"transformer_in {width} -> {8 * head_dim}, {frames} frames {height}x{w}", f"{fold * 1000:.0f}",
            f"{plain * 1000:.0f}", f"{fold / plain:.2f}x", f"{err:.1e}"]


def forward_row(runs: int) -> list:
    from unet3d import UNet3DConditionModel
    config, (b, f, h, w, tokens) = SETTINGS["medium"]
    torch.manual_seed(0)
    model = UNet3DConditionModel(**config).eval()
    randomize_norms_(model)
    gen = torch.Generator().manual_seed(0)
    args = (torch.randn(b, 4, f, h, w, generator=gen), torch.tensor([500]),
            torch.randn(b, tokens, config["cross_attention_dim"], generator=gen))
    fold, plain, err = interleaved(lambda: model(*args).sample, model.transformer_in, runs)
    return ["medium forward (benchmarks/forward.py's row)", f"{fold * 1000:.0f}", f"{plain * 1000:.0f}",
            f"{fold / plain:.2f}x", f"{err:.1e}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, choices=range(1, 101), metavar="N")
    parser.add_argument("--settings", default="medium,zeroscope")
    parser.add_argument("--no-forward", action="store_true", help="time the layer alone")
    opts = parser.parse_args()
    names = opts.settings.split(",")
    unknown = sorted(set(names) - set(LAYERS))
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {sorted(LAYERS)}")
    rows = [layer_row(name, opts.runs) for name in names]
    if "medium" in names and not opts.no_forward:
        rows.append(forward_row(opts.runs))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU, median of {opts.runs}")
    print(table(rows, ["what", "narrow side ms", "plain ms", "time ratio", "rel err"]))


if __name__ == "__main__":
    main()
