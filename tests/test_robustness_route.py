"""``POST /unet3d/estimate`` on a real ComfyUI server (``main.py`` on 127.0.0.1 with the plugin) under hostile and
malformed bodies and hostile files in the models folders (``hostile_requests.py``): every one answers 400 with the
exact kind of refusal and a message naming the value or file, none runs code from a file, bodies at the nodes'
limits answer 200, and the server keeps serving other requests (``/system_stats``, the loader's list) throughout.
Answer times are measured by ``benchmarks/estimate_route.py``, not here.
"""
from __future__ import annotations

import json
import threading

import pytest
from comfy_server_fixture import running_server
from hostile_requests import CASES, EXTREME, GOOD, populate

TIMEOUT = 60  # a request that hangs fails the test instead of the suite


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("route")
    marker = populate(tmp / "models")
    with running_server(tmp / "models", tmp) as comfy:
        yield comfy, marker


def _still_serving(comfy):
    status, body = comfy.request("/system_stats", timeout=TIMEOUT)
    assert status == 200 and "system" in json.loads(body)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_body_is_a_400_of_the_right_kind(server, name):
    comfy, marker = server
    body, kind, words = CASES[name]
    status, answer = comfy.post_json("/unet3d/estimate", body, timeout=TIMEOUT)
    assert status == 400 and isinstance(answer, dict), (status, answer)
    assert answer["ok"] is False and answer["kind"] == kind, answer
    assert words in answer["error"], answer
    if name.startswith("file-"):
        assert body["chain"][-1]["inputs"]["unet_name"] in answer["error"], "the message names the file"
    assert not marker.exists(), "a pickle in the models folder ran code"
    assert "Traceback" not in comfy.log_since_ready(), "a traceback in the server log"
    _still_serving(comfy)


@pytest.mark.parametrize("name", list(EXTREME))
def test_bodies_at_the_nodes_limits_are_answered(server, name):
    comfy, _ = server
    status, answer = comfy.post_json("/unet3d/estimate", EXTREME[name], timeout=TIMEOUT)
    assert status == 200 and answer["ok"] and answer["parameters"] == 1_411_233_860, answer
    assert answer["fits"] is False and answer["needed"] > answer["free"], answer


def test_the_server_answers_other_requests_while_estimates_run(server):
    comfy, _ = server
    body = EXTREME["4096-frames-64-videos-16384px-windows-of-1"]
    results = []

    def hammer():
        for _ in range(6):
            results.append(comfy.post_json("/unet3d/estimate", body, timeout=TIMEOUT)[0])
    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for _ in range(6):
        _still_serving(comfy)
    for thread in threads:
        thread.join(TIMEOUT * 6)
    assert results == [200] * 18


def test_loader_list_survives_a_symlink_loop_and_absurd_configs(server):
    comfy, _ = server
    status, body = comfy.request("/object_info/UNet3DLoader", timeout=TIMEOUT)
    choices = json.loads(body)["UNet3DLoader"]["input"]["required"]["unet_name"][0]
    assert status == 200 and len(choices) == len(set(choices)), choices
    assert GOOD in choices and choices.count("[diffusers] absurd") == 1, choices
    assert not any("loop/" in c for c in choices), choices
