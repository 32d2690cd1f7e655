"""The memory estimate in the real ComfyUI page: headless Chromium (Debian ``chromium``) driven by Playwright's Python
package (``executable_path``, no downloaded browser) against ``main.py`` started here on 127.0.0.1 with the plugin
installed. Loads an example workflow, reads the estimate on the latent node, changes the frame count, sees the
estimate change, and saves a screenshot under ``test-artifacts/``.

The UNet file is a sparse full-size Zeroscope safetensors (real header, no data): the estimate reads headers only.
Host: ``COMFYUI_PATH`` if set (e.g. ComfyUI 0.8.0 with comfyui-frontend-package), else the March 2024 host.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
WORKFLOW = REPO / "example_workflows" / "zeroscope_v2_576w_text_to_video.json"
UNET_FILE = "zeroscope_header_only.safetensors"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """Debian's chromium, installed with apt-get when missing and possible; else skip with the reason."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=900)
        found = shutil.which("chromium")
        if found:
            return found
    pytest.skip("no Chromium: install Debian's `chromium` package (apt-get install -y chromium); this machine "
                "cannot (not root, or no apt-get)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_header_only_unet(path: Path) -> None:
    import struct

    import torch

    from unet3d import UNet3DConditionModel

    with torch.device("meta"):
        sd = UNet3DConditionModel().state_dict()
    header, offset = {}, 0
    for name, tensor in sd.items():
        size = 2 * tensor.numel()
        header[name] = {"dtype": "F16", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from comfy_runner.host import HostError, provision

    chromium = chromium_path()
    try:
        root = provision()
    except HostError as exc:
        pytest.skip(f"no ComfyUI host: {exc}")
    tmp = tmp_path_factory.mktemp("browser")
    (tmp / "models" / "unet").mkdir(parents=True)
    write_header_only_unet(tmp / "models" / "unet" / UNET_FILE)
    paths = tmp / "extra_model_paths.yaml"
    paths.write_text(f"unet3d_browser_test:\n    base_path: {tmp / 'models'}\n    unet: unet\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
            "--extra-model-paths-config", str(paths), "--output-directory", str(tmp / "out"),
            "--temp-directory", str(tmp / "temp"), "--input-directory", str(tmp / "in")]
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/object_info/UNet3DLoader", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"ComfyUI did not start:\n{(tmp / 'server.log').read_text()[-4000:]}")
                time.sleep(1)
        yield {"url": url, "chromium": chromium, "log": tmp / "server.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def estimate_text(page, node_type):
    return page.evaluate("""(type) => {
        const node = window.app.graph._nodes.find((n) => n.type === type);
        const widget = node && node.widgets && node.widgets.find((w) => w.name === "unet3d_estimate");
        return widget ? String(widget.value) : "";
    }""", node_type)


def wait_for_text(page, node_type, predicate, what, timeout=60):
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        text = estimate_text(page, node_type)
        if predicate(text):
            return text
        time.sleep(0.25)
    raise AssertionError(f"{what}: the {node_type} node shows {text!r}")


def test_estimate_shows_on_the_node_and_follows_the_frame_count(server):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright==1.65.2")
    request = urllib.request.Request(server["url"] + "/unet3d/estimate", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"latent": {"frames": 24}, "chain": [
                                         {"type": "UNet3DLoader", "inputs": {"unet_name": UNET_FILE}}]}).encode())
    try:
        direct = json.loads(urllib.request.urlopen(request, timeout=30).read())
    except urllib.error.HTTPError as exc:
        pytest.fail(f"POST /unet3d/estimate answered {exc.code}: the route is not registered (nodes/__init__.py must "
                    f"call nodes.estimate_route.register() when the pack is imported); server log: {server['log']}")
    assert direct["ok"] and direct["parameters"] == 1_411_233_860 and direct["config_source"] == "safetensors header"
    workflow = json.loads(WORKFLOW.read_text())
    for node in workflow["nodes"]:
        if node["type"] == "UNet3DLoader":
            node["widgets_values"][0] = UNET_FILE
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=server["chromium"], args=CHROMIUM_FLAGS,
                                     chromium_sandbox=False, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server["url"] + "/", wait_until="load")
            page.wait_for_function("() => window.app && window.app.graph && window.app.graph._nodes", timeout=60000)
            page.evaluate("(wf) => window.app.loadGraphData(wf)", workflow)
            first = wait_for_text(page, "UNet3DEmptyLatentVideo", lambda t: "GB" in t, "no estimate after loading")
            assert "24 frames = 3.0 s at 8 fps" in first and "peak of" in first
            assert wait_for_text(page, "UNet3DLoader", lambda t: "GB" in t, "no estimate on the loader")
            page.evaluate("""() => {
                const node = window.app.graph._nodes.find((n) => n.type === "UNet3DEmptyLatentVideo");
                const widget = node.widgets.find((w) => w.name === "frames");
                widget.value = 96;
                if (widget.callback) widget.callback(96, window.app.canvas, node);
            }""")
            second = wait_for_text(page, "UNet3DEmptyLatentVideo", lambda t: "96 frames" in t and "GB" in t,
                                   "the estimate did not follow the frame count")
            gb = lambda text: float(text.split("≈ ")[1].split(" GB")[0])  # noqa: E731
            assert gb(second) > gb(first), (first, second)
            for _ in range(5):                     # the new frontend opens its template browser on first start
                if page.locator("[role=dialog]:visible").count() == 0:
                    break
                page.keyboard.press("Escape")
                page.wait_for_timeout(400)
            page.screenshot(path=str(ARTIFACTS / "browser_estimate.png"))
            assert not [e for e in errors if "unet3d" in e.lower()], errors
        finally:
            browser.close()
