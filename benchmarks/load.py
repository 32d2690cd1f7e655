"""Load time and peak memory for a full-size UNet3D checkpoint (the real Zeroscope / ModelScope 1.7B config).

Builds the diffusers default config (1.41 B parameters) with random fp16 weights, writes it as a diffusers-named
single-file ``.safetensors`` and as an original-layout ``text2video_pytorch_model.pth`` (about 2.8 GB each) in a
temporary folder, then loads each in a fresh subprocess with ``UNet3DConditionModel.from_single_file`` and prints
load time and peak RSS against the file size. Needs ~6 GB of disk and ~6 GB of RAM; not part of the test suite.

    python benchmarks/load.py [--keep DIR] [--cast-fp32] [--node]

``--node`` loads each file through the ComfyUI ``UNet3DLoader`` node instead, inside the embedded ComfyUI host
(``COMFYUI_PATH`` when set), on CPU, with the weight dtype ComfyUI picks there ("default": fp32 on CPU) and with
fp16; it prints the node's peak RSS growth (sampled every 0.5 ms) against the size of the loaded weights.

Peak RSS is ``ru_maxrss`` of the child (its baseline after ``import torch`` is shown separately). A ``.pth`` in zip
format is memory-mapped, so its pages are only read when used; "after touch" reads every weight once to show the
resident size once the weights are really in memory (file-backed pages, which the OS can drop and re-read).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_parts() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon", "RssFile", "VmRSS")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 2**20  # GiB
    return out


def child(path: str, dtype: str) -> None:
    import torch

    from unet3d import UNet3DConditionModel

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    model = UNet3DConditionModel.from_single_file(path, torch_dtype=getattr(torch, dtype) if dtype else None)
    seconds = time.perf_counter() - start
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    after_load = _rss_parts()
    with torch.no_grad():
        checksum = sum(float(p.float().sum()) for p in model.parameters())  # forces every page in
    peak_touch = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"seconds": seconds, "base_gib": base, "peak_load_gib": peak_load, "peak_touch_gib": peak_touch,
                      "after_load": after_load, "after_touch": _rss_parts(), "params": params,
                      "weights_gib": weight_bytes / 2**30, "dtype": str(next(model.parameters()).dtype),
                      "finite": checksum == checksum}))


def write_checkpoints(folder: Path) -> list:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(REPO / "tests"))
    from helpers_checkpoint import diffusers_to_original  # test-local reference converter (diffusers -> original)

    from unet3d import UNet3DConditionModel
    from unet3d.network.config import DEFAULTS

    meta = UNet3DConditionModel(device="meta")
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    sd = {k: (torch.randn(v.shape, generator=gen, dtype=torch.float16) * 0.02) for k, v in meta.state_dict().items()}
    print(f"random fp16 weights: {sum(t.numel() for t in sd.values()) / 1e9:.3f} B params, {len(sd)} tensors "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    single = folder / "zeroscope_unet_diffusers.safetensors"
    save_file(sd, single)
    original = folder / "text2video_pytorch_model.pth"
    torch.save(diffusers_to_original(sd, dict(DEFAULTS)), original)
    del sd
    return [single, original]


def node_rows(files, keep_log: Path) -> None:
    """Each file through the UNet3DLoader node in a real ComfyUI host, one fresh host per row."""
    sys.path.insert(0, str(REPO))
    from comfy_runner.client import HostProcess

    probe = REPO / "benchmarks" / "_node_load_probe.py"
    print(f"{'file':<40} {'weight_dtype':>12} {'dtype':>9} {'load s':>7} {'weights':>8} {'RSS before':>10} "
          f"{'peak':>6} {'growth':>7} {'growth / weights':>16}")
    for path in files:
        for weight_dtype in ("default", "fp16"):
            with HostProcess(output_dir=str(keep_log / "out"), log_path=str(keep_log / "host.log")) as host:
                unet_dir = host.root / "models" / "unet"
                unet_dir.mkdir(parents=True, exist_ok=True)
                link = unet_dir / f"unet3d-load-bench{path.suffix}"
                link.unlink(missing_ok=True)
                link.symlink_to(path)
                try:
                    r = host.call(probe, "load_in_node", unet_name=link.name, weight_dtype=weight_dtype)
                finally:
                    link.unlink(missing_ok=True)
            print(f"{path.name:<40} {weight_dtype:>12} {r['dtype'].replace('torch.', ''):>9} {r['seconds']:7.1f} "
                  f"{r['weights_gib']:8.2f} {r['base_gib']:10.2f} {r['peak_gib']:6.2f} {r['growth_gib']:7.2f} "
                  f"{r['growth_gib'] / r['weights_gib']:16.2f}", flush=True)
    print("(GiB; growth = peak RSS during the node's load minus RSS before it; weights = the loaded model's tensors)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, default=None, help="write/reuse the checkpoints in this folder")
    parser.add_argument("--cast-fp32", action="store_true", help="also load each file with torch_dtype=float32")
    parser.add_argument("--node", action="store_true", help="load through the ComfyUI UNet3DLoader node instead")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dtype)
        return 0

    folder = args.keep or Path(tempfile.mkdtemp(prefix="unet3d-load-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        files = [folder / "zeroscope_unet_diffusers.safetensors", folder / "text2video_pytorch_model.pth"]
        if not all(f.is_file() for f in files):
            # in a subprocess so the generator's ~3 GB are returned to the OS before measuring
            subprocess.run([sys.executable, __file__, "--write", str(folder)], check=True)
        if args.node:
            node_rows(files, folder)
            return 0
        runs = [(f, "") for f in files] + ([(f, "float32") for f in files] if args.cast_fp32 else [])
        print(f"{'file':<40} {'size GiB':>8} {'dtype':>14} {'load s':>7} {'base':>6} {'peak':>6} "
              f"{'peak after touch':>16} {'anon/file after load':>21}")
        for path, dtype in runs:
            out = subprocess.run([sys.executable, __file__, "--child", str(path), "--dtype", dtype],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            size = path.stat().st_size / 2**30
            split = f"{r['after_load'].get('RssAnon', 0):.2f}/{r['after_load'].get('RssFile', 0):.2f}"
            print(f"{path.name:<40} {size:8.2f} {r['dtype'].replace('torch.', ''):>14} {r['seconds']:7.1f} "
                  f"{r['base_gib']:6.2f} {r['peak_load_gib']:6.2f} {r['peak_touch_gib']:16.2f} {split:>21}",
                  flush=True)
        print("(GiB; base = child RSS after importing torch + unet3d; peak = ru_maxrss after from_single_file)")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        write_checkpoints(Path(sys.argv[2]))
        sys.exit(0)
    sys.exit(main())
