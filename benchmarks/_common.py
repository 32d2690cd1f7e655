"""Shared bits of the benchmark scripts: configs, peak-RSS measurement in a fresh subprocess, table printing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY = dict(block_out_channels=(32, 64), norm_num_groups=8, layers_per_block=1, cross_attention_dim=64,
            attention_head_dim=8, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
MEDIUM = dict(block_out_channels=(64, 128, 256, 256), cross_attention_dim=1024, attention_head_dim=64)
# name -> (config, (batch, frames, height, width, tokens))
SETTINGS = {
    "tiny": (TINY, (1, 8, 16, 16, 8)),
    "medium": (MEDIUM, (1, 16, 40, 72, 77)),
}


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssPeak:
    """Peak RSS growth over a ``with`` block, sampled every 0.5 ms by a thread (torch ops release the GIL).

    ``ru_maxrss`` alone cannot do this: it is a lifetime high-water mark, often set by imports or loading.
    """

    def __enter__(self):
        import threading

        self.start = current_rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, current_rss_bytes())
                self._stop.wait(0.0005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def run_json(module_args: list, env=None) -> dict:
    """Run ``python -m <module> ...`` in a fresh interpreter and parse the JSON it prints last."""
    proc = subprocess.run([sys.executable, *module_args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{module_args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list, headers: list) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] +
                     [line(r) for r in cells[1:]])
