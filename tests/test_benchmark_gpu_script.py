"""``benchmarks/gpu.py`` (the GPU benchmark, ready for when a GPU is lent) runs end to end on CPU at a small size:
every row it promises is printed with a time and a peak, and the convolution-heavy part's throughput line follows."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_every_row_on_cpu():
    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu import ROWS
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--config", "tiny",
                          "--dtype", "fp32", "--frames", "4", "--width", "64", "--height", "64", "--steps", "1",
                          "--threads", "1"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    for row in ROWS:
        match = re.search(rf"^\| {re.escape(row)}\s*\| ([0-9.]+)\s*\| (-?[0-9.]+)\s*\|$", out.stdout, re.M)
        assert match and float(match.group(1)) > 0, (row, out.stdout)
    assert re.search(r"convolution-heavy part .*: [0-9.e+-]+ TFLOP/s = \d+% of a dense fp32 matmul", out.stdout), \
        out.stdout
