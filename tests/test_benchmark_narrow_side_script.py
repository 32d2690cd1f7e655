"""``benchmarks/narrow_side.py`` (what the narrow-side fold of ``transformer_in`` saves) runs end to end at the
test's size, and its error column shows the fold's output is the plain path's to float rounding."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_narrow_side_benchmark_prints_a_time_ratio_and_a_small_error():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "narrow_side.py"), "--settings", "tiny",
                          "--runs", "1"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    number = r"\s*\| ([0-9.e+-]+)x?"
    row = re.search(r"^\| transformer_in 32 -> 64, 4 frames 8x8" + number * 4 + r"\s*\|$", out.stdout, re.M)
    assert row, out.stdout
    assert float(row.group(3)) > 0 and 0 < float(row.group(4)) <= 1e-5, out.stdout   # a different path, same numbers


def test_narrow_side_benchmark_refuses_an_unknown_setting():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "narrow_side.py"), "--settings", "huge"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "unknown settings ['huge']" in out.stderr
