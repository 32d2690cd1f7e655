"""Prompt travel and FreeNoise in a real ComfyUI: every frame row of every UNet call receives its own frame's
embedding (cfg batched or split, frame windows, several videos), FreeNoise rescheduling exactly the paper's noise
inside real samplers, bit-identical when it cannot act, and clear errors."""
import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.host

PROBES = Path(__file__).resolve().parent / "long_video_probes.py"
KEYFRAMES = [(2, "a red fox in the snow"), (9, "a blue whale under water"), (13, "a green forest at night")]
NEGATIVE = "blurry"


def schedule(keyframes=KEYFRAMES, sep="\n"):
    return sep.join(f"{frame}: {text}" for frame, text in keyframes)


def batching(context_length=8, context_overlap=4, max_batch_rows=0, freenoise=False, freenoise_seed=0):
    return ("UNet3DFrameBatching", dict(context_length=context_length, context_overlap=context_overlap,
                                        context_stride=1, closed_loop=False, fuse_method="pyramid",
                                        max_batch_rows=max_batch_rows, freenoise=freenoise,
                                        freenoise_seed=freenoise_seed))


def travel_prompt(host, frames, text=None, interpolation="linear", **kw):
    """The test graph with UNet3D Prompt Travel as the positive prompt (node "4")."""
    prompt = host.prompt(frames=frames, negative=NEGATIVE, **kw)
    prompt["4"] = {"class_type": "UNet3DPromptTravel", "inputs": {
        "clip": ["2", 0], "text": schedule() if text is None else text, "frames": frames,
        "interpolation": interpolation}}
    return prompt


CASES = {
    "cfg batched, no windows": dict(videos=1, patch=None, interpolation="linear"),
    "windows, cond and uncond split": dict(videos=1, patch=batching(8, 4, max_batch_rows=8), interpolation="linear"),
    "windows, hold": dict(videos=1, patch=batching(8, 3), interpolation="hold"),
    "two videos in windows": dict(videos=2, patch=batching(8, 4), interpolation="linear"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_each_frame_row_receives_its_own_embedding(host, case):
    kw = CASES[case]
    frames, seed = 16, 8
    host.sample(host.prompt(frames=4, steps=1, seed=1))          # caches the loader output the probe hooks
    prompt = travel_prompt(host, frames, interpolation=kw["interpolation"], batch_size=kw["videos"], steps=1,
                           cfg=5.0, seed=seed, width=64, height=64, patch=kw["patch"])
    r = host.proc.call(str(PROBES), "rows_received", prompt=prompt, keyframes=KEYFRAMES, negative=NEGATIVE,
                       frames=frames, videos=kw["videos"], interpolation=kw["interpolation"], seed=seed, size=8)
    every = {f"{v},{f},{k}" for v in range(kw["videos"]) for f in range(frames) for k in (0, 1)}
    assert set(r["errors"]) == every, sorted(every - set(r["errors"]))[:6]
    assert r["spread"] > 1000 * 1e-5 * r["scale"], r                 # keyframe embeddings are far apart
    worst = max(r["errors"].values())
    assert worst <= 1e-5 * r["scale"], sorted(r["errors"].items(), key=lambda kv: -kv[1])[:4]
    if kw["patch"] is not None:
        assert all(rows < 2 * kw["videos"] * frames for rows, _ in r["calls"]), r["calls"]   # windows really ran
    if "split" in case:
        assert all(chunks == 1 for _, chunks in r["calls"]), r["calls"]


def test_schedule_for_another_frame_count_fails_before_sampling(host):
    prompt = travel_prompt(host, 16, steps=1, width=64, height=64)
    prompt["6"]["inputs"]["frames"] = 12
    answer = host.proc.run(prompt, check=False)
    assert not answer["ok"]
    assert "schedule gives 16 frames their prompts, but the sampler's latent holds 12 frames" in json.dumps(answer)


def test_malformed_schedule_names_the_keyframe(host):
    answer = host.proc.run(travel_prompt(host, 16, text="0: a fox\n16: a whale", steps=1, width=64, height=64),
                           check=False)
    assert not answer["ok"]
    assert "keyframe 16 ('a whale') is beyond the video, whose frames are 0 to 15" in json.dumps(answer)


@pytest.mark.parametrize("sampler_name, scheduler, model_sampling", [
    ("euler", "normal", None), ("dpmpp_2m", "karras", None), ("ddim", "ddim_uniform", None),
    ("euler", "normal", "v_prediction")])
def test_freenoise_samples_from_exactly_the_papers_noise(host, sampler_name, scheduler, model_sampling):
    host.sample(host.prompt(frames=4, steps=1, seed=1))          # loader and prompt outputs for the probe
    r = host.proc.call(str(PROBES), "freenoise_in_sampler", sampler_name=sampler_name, scheduler=scheduler,
                       model_sampling=model_sampling)
    assert r == {"equal": True, "differs_from_plain": True, "finite": True, "noise_changed": True}


def test_freenoise_matches_core_comfyuis_own_where_it_exists(host):
    r = host.proc.call(str(PROBES), "core_freenoise_agrees")
    if not r["available"]:      # of the supported hosts, only 0.8.0 has core FreeNoise
        assert host.version in ("march-2024", "0.3.64"), f"ComfyUI {host.version} lacks apply_freenoise"
        return
    assert r["equal"]


def test_freenoise_through_ksampler(host):
    kw = dict(steps=2, cfg=6.0, seed=4, width=64, height=64)
    short_plain, _ = host.sample(host.prompt(frames=8, patch=batching(8, 4), **kw))
    short_on, _ = host.sample(host.prompt(frames=8, patch=batching(8, 4, freenoise=True), **kw))
    assert torch.equal(short_on, short_plain)                       # one window: nothing to reschedule
    plain, _ = host.sample(host.prompt(frames=20, patch=batching(8, 4), **kw))
    on, _ = host.sample(host.prompt(frames=20, patch=batching(8, 4, freenoise=True), **kw))
    again, _ = host.sample(host.prompt(frames=20, patch=batching(8, 4, freenoise=True), **kw), fresh=True)
    other, _ = host.sample(host.prompt(frames=20, patch=batching(8, 4, freenoise=True, freenoise_seed=1), **kw))
    assert torch.isfinite(on).all()
    assert torch.equal(on, again)
    assert not torch.allclose(on, plain, atol=1e-4) and not torch.allclose(on, other, atol=1e-4)


def test_freenoise_refuses_several_videos(host):
    prompt = host.prompt(frames=12, batch_size=2, steps=1, width=64, height=64, patch=batching(8, 4, freenoise=True))
    answer = host.proc.run(prompt, check=False)
    assert not answer["ok"]
    assert "holds 2 videos of 12 frames side by side" in json.dumps(answer)
