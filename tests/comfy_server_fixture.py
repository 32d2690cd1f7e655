"""A real ComfyUI server for tests that talk HTTP (the estimate route, the browser test)."""
import contextlib

import pytest


@contextlib.contextmanager
def running_server(models_dir, tmp):
    """A ``comfy_runner.server.ComfyServer`` on ``models_dir``: the test fails when a host is there but the server
    does not start, and skips (saying why) when there is no host at all."""
    from comfy_runner.host import HostError
    from comfy_runner.server import ComfyServer

    try:
        comfy = ComfyServer(models_dir, tmp)
    except HostError as exc:
        if "did not start" in str(exc):
            pytest.fail(str(exc))
        pytest.skip(f"no ComfyUI host: {exc}")
    with comfy:
        yield comfy
