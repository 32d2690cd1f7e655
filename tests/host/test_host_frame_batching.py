"""UNet3DFrameBatching in a real ComfyUI: bit-identical when one window covers the video, long videos through
KSampler with cfg > 1 and core FreeU_V2 stacked, cond/uncond and window splitting, wrapper chaining, errors."""
import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.host

PROBES = Path(__file__).resolve().parent / "frame_batching_probes.py"
FREEU_V2 = {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}


def batching(context_length=24, context_overlap=8, context_stride=1, closed_loop=False, fuse_method="pyramid",
             max_batch_rows=0):
    return ("UNet3DFrameBatching", dict(context_length=context_length, context_overlap=context_overlap,
                                        context_stride=context_stride, closed_loop=closed_loop,
                                        fuse_method=fuse_method, max_batch_rows=max_batch_rows))


def with_freeu_v2(prompt):
    """Stack core FreeU_V2 after the patch node (ids from comfy_runner.graphs: "10" patch, "7" sampler)."""
    prompt = dict(prompt)
    prompt["13"] = {"class_type": "FreeU_V2", "inputs": {"model": ["10", 0], **FREEU_V2}}
    prompt["7"] = {**prompt["7"], "inputs": {**prompt["7"]["inputs"], "model": ["13", 0]}}
    return prompt


@pytest.mark.parametrize("sampler_name, scheduler", [("euler", "normal"), ("dpmpp_2m", "karras"),
                                                     ("ddim", "ddim_uniform"), ("uni_pc", "normal")])
def test_context_covering_every_frame_is_bit_identical_to_no_batching(host, sampler_name, scheduler):
    kw = dict(frames=8, steps=2, cfg=6.0, seed=21, sampler_name=sampler_name, scheduler=scheduler)
    plain, _ = host.sample(host.prompt(**kw))
    batched, _ = host.sample(host.prompt(patch=batching(context_stride=3, closed_loop=True), **kw))
    capped, _ = host.sample(host.prompt(patch=batching(context_length=8, context_overlap=2, max_batch_rows=16), **kw))
    assert torch.isfinite(plain).all()
    assert torch.equal(batched, plain)
    assert torch.equal(capped, plain)


def test_64_frames_sample_in_windows_with_cfg_and_core_freeu_v2(host):
    host.sample(host.prompt(frames=8, steps=1, seed=31))          # caches the loader output the probe hooks
    prompt = with_freeu_v2(host.prompt(frames=64, steps=1, cfg=7.5, seed=5,
                                       patch=batching(24, 8, max_batch_rows=24)))
    r = host.proc.call(str(PROBES), "calls_seen", prompt=prompt)
    assert r["shape"] == [64, 4, 16, 16] and r["finite"] and r["std"] > 0
    assert r["calls"], "the UNet was never called"
    # cond and uncond split into calls of one window (24 frames) of one video each
    assert all(rows == 24 and k == 1 for rows, k, _ in r["calls"]), r["calls"][:6]
    windows = 4                                     # 64 frames, length 24, overlap >= 8
    assert len(r["calls"]) == 2 * windows           # one euler step: (cond + uncond) x windows


def test_windowed_sampling_differs_from_full_and_freeu_still_acts(host):
    kw = dict(frames=24, steps=1, cfg=7.0, seed=6)
    full, _ = host.sample(host.prompt(**kw))
    windowed, _ = host.sample(host.prompt(patch=batching(12, 4, fuse_method="overlap-linear"), **kw))
    freeu, _ = host.sample(with_freeu_v2(host.prompt(patch=batching(12, 4, fuse_method="overlap-linear"), **kw)))
    assert torch.isfinite(windowed).all() and torch.isfinite(freeu).all()
    assert not torch.allclose(full, windowed, atol=1e-4)
    assert not torch.allclose(windowed, freeu, atol=1e-3), "FreeU_V2 must still change the windowed output"


def test_existing_wrapper_is_chained_and_input_models_are_untouched(host):
    host.sample(host.prompt(frames=8, steps=1, seed=30))          # loader / text outputs for the probe
    r = host.proc.call(str(PROBES), "chains_an_existing_wrapper", frames=40, max_batch_rows=24)
    assert r["ours_is_wrapper"] and r["previous_is_recorder"]
    assert r["wrapped_kept_recorder"] and r["base_unchanged"]
    assert r["finite"] and r["shape"] == [40, 4, 16, 16]
    # 40 frames, windows of 16 -> every call is one window of one video, and its conds match its rows
    assert r["recorded"] and all(rows == 16 and len(cu) == 1 and same and ctx == rows
                                 for rows, cu, same, ctx in r["recorded"]), r["recorded"][:4]


def test_bad_settings_fail_with_a_clear_message(host):
    answer = host.proc.run(host.prompt(frames=8, steps=1, patch=batching(24, 24)), check=False)
    assert not answer["ok"]
    assert "context_overlap (24) must be smaller than context_length (24)" in json.dumps(answer)
    answer = host.proc.run(host.prompt(frames=8, steps=1, patch=batching(24, 8, max_batch_rows=8)), check=False)
    assert not answer["ok"]
    assert "max_batch_rows (8) is smaller than context_length (24)" in json.dumps(answer)
