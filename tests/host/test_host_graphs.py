"""Real ComfyUI graphs: UNet3DLoader -> KSampler (CLIPTextEncode +/-) -> VAEDecode -> SaveAnimatedWEBP, samplers,
determinism, and the loader's file kinds and dtypes. The host is shared per session (conftest.py)."""
import os

import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.host


def _frames_in(path):
    with Image.open(path) as im:
        return getattr(im, "n_frames", 1), im.size


def test_text_to_video_writes_an_animated_webp_with_one_frame_per_latent_frame(host):
    prompt = host.prompt(output="webp", frames=8, width=128, height=96, steps=2, prefix="t2v_single")
    answer = host.proc.run(prompt)
    images = answer["outputs"]["9"]["images"]
    assert len(images) == 1
    path = os.path.join(answer["output_dir"], images[0]["subfolder"], images[0]["filename"])
    assert os.path.getsize(path) > 0
    assert _frames_in(path) == (8, (128, 96))


def test_batch_of_two_videos_decodes_to_batch_times_frames_images(host):
    prompt = host.prompt(output="webp", frames=4, batch_size=2, steps=1, prefix="t2v_batch")
    answer = host.proc.run(prompt)
    image = answer["outputs"]["9"]["images"][0]
    assert _frames_in(os.path.join(answer["output_dir"], image["subfolder"], image["filename"]))[0] == 8


def test_batch_videos_are_sampled_independently_of_each_other(host):
    """With batch_size 2 the UNet must fold each cond chunk's 8 rows into two videos of 4 frames (not one of 8):
    it receives num_video_frames=4 from the empty latent."""
    seen = host.probe("frames_seen", prompt=host.prompt(frames=4, batch_size=2, steps=1, seed=77, cfg=7.0))
    assert seen["rows_per_chunk"] == [8] and seen["frames"] == [4]


def test_same_seed_gives_identical_frames_and_another_seed_does_not(host):
    first, _ = host.sample(host.prompt(seed=11, steps=2))
    other, _ = host.sample(host.prompt(seed=12, steps=2))   # changes the sampler input, so the next run re-executes
    again, answer = host.sample(host.prompt(seed=11, steps=2))
    cached = [d for e, d in answer.get("messages", []) if e == "execution_cached"]
    assert all("7" not in d.get("nodes", []) for d in cached), "the sampler must have run again"
    assert first.shape == (8, 4, 16, 16) and torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("sampler", ["KSamplerAdvanced", "SamplerCustom"])
def test_other_core_samplers_run(host, sampler):
    out, _ = host.sample(host.prompt(sampler=sampler, seed=3, steps=2, sampler_name="dpmpp_2m", scheduler="karras"))
    assert out.shape == (8, 4, 16, 16) and torch.isfinite(out).all()


def test_ksampler_and_ksampler_advanced_agree(host):
    a, _ = host.sample(host.prompt(sampler="KSampler", seed=5, steps=2))
    b, _ = host.sample(host.prompt(sampler="KSamplerAdvanced", seed=5, steps=2))
    assert torch.equal(a, b)


def test_diffusers_folder_and_single_file_give_the_same_model(host):
    a, _ = host.sample(host.prompt(seed=21, steps=1))
    prompt = host.prompt(seed=21, steps=1)
    prompt["1"]["inputs"]["unet_name"] = host.standins["unet_diffusers"]
    b, _ = host.sample(prompt)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp8_e4m3fn"])
def test_reduced_weight_dtypes_sample_close_to_fp32(host, dtype):
    ref, _ = host.sample(host.prompt(seed=31, steps=1, cfg=1.0))
    out, _ = host.sample(host.prompt(seed=31, steps=1, cfg=1.0, weight_dtype=dtype))
    assert torch.isfinite(out).all()
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < {"fp16": 1e-2, "bf16": 5e-2, "fp8_e4m3fn": 0.3}[dtype], rel


def test_missing_model_file_fails_with_the_folders_to_use(host):
    prompt = host.prompt()
    prompt["1"]["inputs"]["unet_name"] = "no-such-model.safetensors"
    answer = host.proc.run(prompt, check=False)
    assert not answer["ok"]
    assert "no-such-model.safetensors" in str(answer)   # combo validation (value_not_in_list) names the value
