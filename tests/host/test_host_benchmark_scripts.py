"""The graph benchmarks run end to end in a real ComfyUI (at a tiny size, so they cannot rot unseen): the step cache
benchmark's table has a row per interval, the plain row is its own reference, and the cached rows really differ; the
chain parity benchmark's figures say the graph matches diffusers where the settings match, and not where they do not."""
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


def test_chain_parity_benchmark_matches_diffusers_where_the_settings_match():
    """The whole chain at a tiny size: the matched sampler setting, both VAE files and both text-tower layouts agree
    with diffusers / transformers; a mismatched setting (the shipped leading DDIM against `simple`) does not."""
    cmd = [sys.executable, "benchmarks/chain_parity.py", "--frames", "2", "--size", "64", "--steps", "3"]
    done = subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {tuple(cells[:2]): cells[2:] for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines()
             if line.startswith("| `"))}
    assert float(rows[("`dpmpp_2m` + `simple`", "DPM++ 2M trailing")][0]) > 80, done.stdout
    assert float(rows[("`ddim` + `simple`", "DDIM as shipped (leading)")][0]) < 30, done.stdout
    vae = [float(key[1]) for key in rows if key[0] in ("`vae/diffusion_pytorch_model.safetensors`",
                                                       "`VQGAN_autoencoder.pth`")]       # decode PSNR dB
    text = [float(key[1]) for key in rows if "layout" in key[0]]                        # max abs difference
    assert len(vae) == 2 and min(vae) > 100, done.stdout
    assert len(text) == 2 and max(text) < 1e-4, done.stdout
