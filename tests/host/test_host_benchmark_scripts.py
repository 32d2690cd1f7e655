"""The graph benchmarks run end to end in a real ComfyUI (at a tiny size, so they cannot rot unseen): the step cache
benchmark's table has a row per interval, the plain row is its own reference, and the cached row really differs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.host
REPO = Path(__file__).resolve().parents[2]


def test_step_cache_graph_benchmark_prints_a_row_per_interval():
    cmd = [sys.executable, "benchmarks/step_cache_graph.py", "--settings", "tiny", "--steps", "3", "--intervals",
           "1,2", "--repeats", "1"]
    done = subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines()
            if line.startswith("| tiny")]
    assert [row[2] for row in rows] == ["1", "2"], done.stdout
    plain, cached = rows
    assert plain[5] == "1.00x" and float(plain[6]) == 0.0
    assert float(cached[6]) > 0, "the cached run must change the latent (the cache acted)"
