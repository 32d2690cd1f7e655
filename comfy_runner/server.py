"""A real ComfyUI server (its own ``main.py``, this plugin installed) on 127.0.0.1, for tests and benchmarks that
talk HTTP to it as the browser does.

    with ComfyServer(models=Path("models")) as server:      # models/unet, models/diffusers, models/loras ...
        status, answer = server.post_json("/unet3d/estimate", {...})
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional, Tuple

from .host import HostError, provision

MODEL_KINDS = ("unet", "diffusers", "loras", "clip", "vae")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """``main.py --cpu`` with ``models/<kind>`` folders of ``models`` added through an extra_model_paths file."""

    def __init__(self, models: Path, work: Optional[Path] = None, comfyui_path: Optional[str] = None,
                 start_timeout: float = 240):
        self.models, self.work = Path(models), Path(work or models.parent)
        self.root = provision(comfyui_path)
        for kind in MODEL_KINDS:
            (self.models / kind).mkdir(parents=True, exist_ok=True)
        paths = self.work / "extra_model_paths.yaml"
        paths.write_text("unet3d_test_server:\n    base_path: " + str(self.models) + "\n"
                         + "".join(f"    {kind}: {kind}\n" for kind in MODEL_KINDS))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.work / "server.log"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        args = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--disable-auto-launch", "--extra-model-paths-config", str(paths),
                "--output-directory", str(self.work / "out"), "--temp-directory", str(self.work / "temp"),
                "--input-directory", str(self.work / "in")]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + start_timeout
        while True:
            try:
                urllib.request.urlopen(self.url + "/object_info/UNet3DLoader", timeout=5).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.close()
                    raise HostError(f"ComfyUI did not start:\n{self.log_tail()}")
                time.sleep(1)
        self.ready_at = self.log_path.stat().st_size

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def log_since_ready(self) -> str:
        """What the server logged after it started (start-up noise, e.g. core nodes missing optional packages,
        excluded)."""
        with open(self.log_path, "rb") as f:
            f.seek(self.ready_at)
            return f.read().decode(errors="replace")

    def request(self, path: str, data: Optional[bytes] = None, timeout: float = 60,
                headers: Optional[dict] = None) -> Tuple[int, bytes]:
        """(HTTP status, body) of a GET (``data`` None) or POST."""
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def post_json(self, path: str, body: Any, timeout: float = 60) -> Tuple[int, Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, answer = self.request(path, raw, timeout, {"Content-Type": "application/json"})
        try:
            return status, json.loads(answer)
        except ValueError:
            return status, answer.decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> "ComfyServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
