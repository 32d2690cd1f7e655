"""Answer times of ``POST /unet3d/estimate`` on a real ComfyUI server over the hostile set of the robustness tests
(``tests/hostile_requests.py``: malformed bodies, damaged files, bodies at the nodes' limits), and how long
``GET /system_stats`` takes while the slowest valid body is being estimated by three clients at once.

    python benchmarks/estimate_route.py            # prints a table; the worst answer time is the last line
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from hostile_requests import CASES, EXTREME, populate  # noqa: E402

from benchmarks._common import table  # noqa: E402
from comfy_runner.server import ComfyServer  # noqa: E402

REPEATS = 3


def timed(call):
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="unet3d-route-") as tmp:
        populate(Path(tmp) / "models")
        with ComfyServer(Path(tmp) / "models", Path(tmp)) as server:
            rows = []
            bodies = {**{k: v[0] for k, v in CASES.items()}, **EXTREME}
            for name, body in bodies.items():
                times, status = [], None
                for _ in range(REPEATS):
                    seconds, (status, _) = timed(lambda: server.post_json("/unet3d/estimate", body, timeout=120))
                    times.append(seconds)
                rows.append((name, status, statistics.median(times), max(times)))
            rows.sort(key=lambda r: -r[3])
            print(table([[n, s, f"{m * 1e3:.1f}", f"{w * 1e3:.1f}"] for n, s, m, w in rows],
                        ["body", "status", "median ms", "max ms"]))
            slowest = EXTREME["4096-frames-64-videos-16384px-windows-of-1"]
            stop = threading.Event()

            def hammer():
                while not stop.is_set():
                    server.post_json("/unet3d/estimate", slowest, timeout=120)
            threads = [threading.Thread(target=hammer) for _ in range(3)]
            for thread in threads:
                thread.start()
            stats = [timed(lambda: server.request("/system_stats", timeout=120))[0] for _ in range(20)]
            stop.set()
            for thread in threads:
                thread.join()
            print(f"\n/system_stats during 3 concurrent estimates of the slowest valid body: median "
                  f"{statistics.median(stats) * 1e3:.1f} ms, max {max(stats) * 1e3:.1f} ms")
            print(f"worst estimate answer over {len(rows)} bodies x {REPEATS}: {rows[0][3] * 1e3:.1f} ms "
                  f"({rows[0][0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
