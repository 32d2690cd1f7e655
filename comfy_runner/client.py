"""``HostProcess``: a ComfyUI host in a subprocess (``worker.py``), driven by JSON lines. Used by the CLI and tests.

The subprocess runs with the ComfyUI root as its working directory and ``sys.path[0]``, so ComfyUI's top-level
modules (``nodes``, ``execution``, ``server``...) never meet this repository's ``nodes/`` package.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

from .host import REPO_ROOT, provision
from .workflow import WorkflowError

WORKER = Path(__file__).resolve().parent / "worker.py"


class HostCallError(RuntimeError):
    def __init__(self, message: str, answer: Dict[str, Any]):
        super().__init__(message)
        self.answer = answer


class HostProcess:
    def __init__(self, comfyui_path: Optional[str] = None, output_dir: Optional[str] = None,
                 host_args: str = "", log_path: Optional[str] = None, python: str = sys.executable):
        self.root = provision(comfyui_path)
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="unet3d-output-")).resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        log = open(log_path, "a") if log_path else None
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)                      # the repo root must not shadow ComfyUI's `nodes`
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            [python, "-u", str(WORKER), "--comfyui", str(self.root), "--output", str(self.output_dir),
             "--plugin-root", str(REPO_ROOT), f"--host-args={host_args}"],
            cwd=str(self.root), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        if log:
            log.close()
        self.hello = self._read()
        if not self.hello.get("ok"):
            self.close()
            raise HostCallError(f"ComfyUI host at {self.root} did not start: {self.hello.get('error')}\n"
                                f"{self.hello.get('traceback', '')}", self.hello)
        if not self.hello.get("unet3d_nodes"):
            self.close()
            raise HostCallError(f"ComfyUI at {self.root} started but did not load the UNet3D nodes; see the "
                                f"IMPORT FAILED lines in its log{f' ({log_path})' if log_path else ''}", self.hello)

    def _read(self) -> Dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            return {"ok": False, "error": f"host process exited with code {code}"
                    + (f"; log: {self.log_path}" if self.log_path else "")}
        return json.loads(line)

    def request(self, cmd: str, check: bool = True, **kwargs) -> Dict[str, Any]:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if answer.get("kind") == "WorkflowError":
            raise WorkflowError(answer["error"])
        if check and not answer.get("ok"):
            raise HostCallError(f"host {cmd} failed: {json.dumps(answer.get('error'), indent=1)[:4000]}\n"
                                f"{answer.get('node_errors') or ''}\n{answer.get('traceback', '')}", answer)
        return answer

    def run(self, prompt: Dict[str, Any], check: bool = True, **kwargs) -> Dict[str, Any]:
        return self.request("run", check=check, prompt=prompt, **kwargs)

    def sample(self, prompt: Dict[str, Any], node_id: str, capture_dir: str, **kwargs):
        """Run ``prompt``; return (the LATENT samples tensor node ``node_id`` output, the answer)."""
        import torch  # the client itself needs no torch; only this reader does

        answer = self.run(prompt, capture=[node_id], capture_dir=capture_dir, **kwargs)
        raw = torch.load(answer["captured"][node_id], weights_only=True)
        first = raw[0][0] if isinstance(raw[0], list) else raw[0]   # list outputs (0.8.0) or plain ones
        return first["samples"], answer

    def call(self, file: str, func: str, **kwargs) -> Any:
        return self.request("call", file=str(file), func=func, kwargs=kwargs)["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "HostProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
