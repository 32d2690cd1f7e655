"""The graph benchmarks run end to end in a real ComfyUI (at a tiny size, so they cannot rot unseen): the step cache
benchmark's table has a row per interval, the plain row is its own reference, and the cached rows really differ."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.host
REPO = Path(__file__).resolve().parents[2]


def test_step_cache_graph_benchmark_prints_a_row_per_interval():
    cmd = [sys.executable, "benchmarks/step_cache_graph.py", "--settings", "tiny", "--steps", "4", "--intervals",
           "1,2,2t", "--repeats", "1"]
    done = subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines()
            if line.startswith("| tiny")]
    assert [row[2] for row in rows] == ["1", "2", "2 + temporal_in reused"], done.stdout
    plain, cached, more = rows
    assert plain[5] == "1.00x" and float(plain[6]) == 0.0
    assert float(cached[6]) > 0, "the cached run must change the latent (the cache acted)"
    assert float(more[6]) > 0 and more[6] != cached[6], "reusing transformer_in's delta must change it further"
