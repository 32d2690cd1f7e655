"""The memory estimate in the real ComfyUI page: headless Chromium (Debian ``chromium``) driven by Playwright's Python
package (``executable_path``, no downloaded browser) against ``main.py`` started here on 127.0.0.1 with the plugin
installed. Loads an example workflow, reads the estimate on the latent node, changes the frame count, sees the
estimate change, and saves a screenshot under ``test-artifacts/``.

The UNet file is a sparse full-size Zeroscope safetensors (real header, no data): the estimate reads headers only.
Host: ``COMFYUI_PATH`` if set (e.g. ComfyUI 0.8.0 with comfyui-frontend-package), else the March 2024 host.
"""
from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from comfy_server_fixture import running_server
from hostile_files import header_only_unet

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
WORKFLOW = REPO / "example_workflows" / "zeroscope_v2_576w_text_to_video.json"
UNET_FILE = "zeroscope_header_only.safetensors"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """Debian's chromium, or skip with the way to get it. The test never installs anything itself."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    pytest.skip("no Chromium on this machine: install Debian's `chromium` package (as root: "
                "`bash scripts/install_chromium.sh`, which CI's .ci/run runs) to run the browser test")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    chromium = chromium_path()
    tmp = tmp_path_factory.mktemp("browser")
    (tmp / "models" / "unet").mkdir(parents=True)
    header_only_unet(tmp / "models" / "unet" / UNET_FILE)
    with running_server(tmp / "models", tmp) as comfy:
        yield {"url": comfy.url, "chromium": chromium, "log": comfy.log_path}


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
