"""FreeNoise noise rescheduling: the frame -> source map against a direct implementation of the paper's shuffle, the
model-sampling object patch that applies it (delegation, devices, chaining), and the frame-batching node's option
(nothing installed when off, several videos refused). The host tests run it through real ComfyUI samplers."""
import copy

import pytest
import torch

from comfy_runner.offline import plugin_module
from unet3d.video.folding import frame_layout
from unet3d.video.freenoise import freenoise_sources, reschedule_noise

fn = plugin_module("nodes.freenoise")
fb = plugin_module("nodes.frame_batching")
UNet3DError = fb.UNet3DError          # the plugin package's own class


def paper_shuffle(noise, context_length, context_overlap, seed):
    """FreeNoise (arXiv 2310.15169, noise rescheduling) written directly: keep the first window's noise; for each
    following stretch of ``stride`` frames, copy the stretch one window earlier in a random order (one
    ``torch.randperm`` per stretch from a CPU generator seeded with ``seed``); a short last stretch shuffles that
    many frames."""
    noise = noise.clone()
    frames, stride = noise.shape[0], context_length - context_overlap
    generator = torch.Generator().manual_seed(seed)
    place = context_length
    while place < frames:
        count = min(stride, frames - place)
        order = torch.randperm(count, generator=generator)
        noise[place:place + count] = noise[place - context_length + order]
        place += stride
    return noise


CASES = [(96, 24, 8, 0), (96, 24, 8, 7), (40, 16, 4, 3), (37, 16, 4, 1), (30, 8, 0, 5), (20, 4, 3, 2),
         (25, 24, 8, 0), (24, 24, 8, 0), (10, 24, 8, 0), (1, 1, 0, 0), (50, 1, 0, 4)]


@pytest.mark.parametrize("frames, length, overlap, seed", CASES)
def test_sources_reproduce_the_papers_shuffle(frames, length, overlap, seed):
    noise = torch.randn(frames, 4, 3, 2, generator=torch.Generator().manual_seed(frames + seed))
    expected = paper_shuffle(noise, length, overlap, seed)
    got = reschedule_noise(noise, freenoise_sources(frames, length, overlap, seed))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("frames, length, overlap, seed", CASES)
def test_every_stretch_is_a_permutation_of_the_stretch_one_window_back(frames, length, overlap, seed):
    sources = freenoise_sources(frames, length, overlap, seed)
    assert sources[:length] == tuple(range(min(length, frames)))
    assert all(s < length for s in sources)
    stride = length - overlap
    for place in range(length, frames, stride):
        count = min(stride, frames - place)
        assert sorted(sources[place:place + count]) == sorted(sources[place - length:place - length + count])


def test_the_seed_decides_the_shuffle_and_nothing_else_does():
    assert freenoise_sources(96, 24, 8, 3) == freenoise_sources(96, 24, 8, 3)
    assert freenoise_sources(96, 24, 8, 3) != freenoise_sources(96, 24, 8, 4)
    assert freenoise_sources(24, 24, 8, 3) == tuple(range(24))


@pytest.mark.parametrize("args, message", [((0, 24, 8, 0), "num_frames"), ((96, 24, 24, 0), "smaller than"),
                                           ((96, 24, 8, -1), "seed"), ((96, 24, 8, 1 << 64), "below 2"),
                                           ((96, True, 8, 0), "context_length")])
def test_bad_arguments_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        freenoise_sources(*args)


class StandInSampling(torch.nn.Module):
    """The parts of ComfyUI's ModelSamplingDiscrete + EPS that samplers use."""

    def __init__(self):
        super().__init__()
        self.register_buffer("sigmas", torch.linspace(0.03, 14.6, 10))

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return sigma * 10

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        scale = torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else sigma
        return noise * scale + latent_image


def test_sampling_object_reschedules_the_noise_and_answers_for_the_rest():
    inner = StandInSampling()
    ours = fn.FreeNoiseSampling(inner, 8, 2, 11)
    noise = torch.randn(30, 4, 2, 2)
    latent = torch.randn(30, 4, 2, 2)
    sigma = torch.tensor(3.0)
    expected = inner.noise_scaling(sigma, paper_shuffle(noise, 8, 2, 11), latent, True)
    assert torch.equal(ours.noise_scaling(sigma, noise, latent, True), expected)
    assert torch.equal(ours.noise_scaling(sigma, noise, latent), inner.noise_scaling(sigma, paper_shuffle(
        noise, 8, 2, 11), latent))
    assert torch.equal(ours.sigma_max, inner.sigmas[-1]) and ours.sigmas is inner.sigmas
    assert torch.equal(ours.timestep(sigma), torch.tensor(30.0))
    short = torch.randn(8, 4, 2, 2)          # one window: the noise is not touched
    assert torch.equal(ours.noise_scaling(sigma, short, latent[:8]), inner.noise_scaling(sigma, short, latent[:8]))
    with pytest.raises(AttributeError):
        ours.no_such_attribute
    ours.to(torch.float64)                  # the replaced object moves with the model
    assert inner.sigmas.dtype == torch.float64


class StandInPatcher:
    """The parts of comfy.model_patcher.ModelPatcher the node uses (clone deep-copies model_options, copies the
    object patches; object_patches_backup is shared between clones)."""

    def __init__(self, model=None, model_options=None, object_patches=None, backup=None):
        self.model = model or torch.nn.Module()
        if model is None:
            self.model.model_sampling = StandInSampling()
        self.model_options = model_options or {"transformer_options": {}}
        self.object_patches = dict(object_patches or {})
        self.object_patches_backup = {} if backup is None else backup

    def clone(self):
        return StandInPatcher(self.model, copy.deepcopy(self.model_options), self.object_patches,
                              self.object_patches_backup)

    def set_model_unet_function_wrapper(self, fn):
        self.model_options["model_function_wrapper"] = fn

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj


def patch(model, freenoise, length=8, overlap=2, seed=0, cap=0):
    return fb.UNet3DFrameBatching().patch(model, length, overlap, 1, False, "pyramid", cap, freenoise, seed)[0]


def test_off_installs_no_sampling_object_and_on_wraps_the_current_one():
    base = StandInPatcher()
    assert patch(base, False).object_patches == {}
    assert fb.UNet3DFrameBatching().patch(base, 8, 2, 1, False, "pyramid", 0)[0].object_patches == {}
    on = patch(base, True, seed=5)
    ours = on.object_patches["model_sampling"]
    assert isinstance(ours, fn.FreeNoiseSampling) and ours.inner is base.model.model_sampling
    assert (ours.context_length, ours.context_overlap, ours.seed) == (8, 2, 5)
    assert base.object_patches == {} and on.model_options["model_function_wrapper"].freenoise
    again = patch(on, True, length=12, overlap=4)          # replaced, not stacked
    assert again.object_patches["model_sampling"].inner is base.model.model_sampling
    assert again.object_patches["model_sampling"].context_length == 12


def test_an_earlier_sampling_patch_is_kept_inside_and_a_foreign_applied_one_is_not_taken():
    custom = StandInSampling()
    earlier = StandInPatcher(object_patches={"model_sampling": custom})
    assert patch(earlier, True).object_patches["model_sampling"].inner is custom
    original = StandInSampling()
    applied = StandInPatcher(backup={"model_sampling": original})  # another patcher's object is on the model now
    applied.model.model_sampling = StandInSampling()
    assert patch(applied, True).object_patches["model_sampling"].inner is original


class StandInModel:
    def __init__(self, sampling):
        self.model_sampling = sampling
        self.calls = 0

    def apply_model(self, x, t, **kwargs):
        self.calls += 1
        return x * 2


def sampler_args(videos, frames, chunks=2):
    rows = chunks * videos * frames
    x = torch.randn(rows, 4, 2, 2)
    c = {"c_crossattn": torch.randn(rows, 3, 8), "transformer_options": {"cond_or_uncond": [0, 1][:chunks]}}
    if videos > 1:
        c["num_video_frames"] = frames
    return {"input": x, "timestep": torch.ones(rows), "c": c, "cond_or_uncond": [0, 1][:chunks]}


def test_several_videos_are_refused_before_the_model_runs():
    on = patch(StandInPatcher(), True)
    model = StandInModel(on.object_patches["model_sampling"])
    with pytest.raises(UNet3DError, match="2 videos of 12 frames side by side"):
        on.model_options["model_function_wrapper"](model.apply_model, sampler_args(2, 12))
    assert model.calls == 0
    out = on.model_options["model_function_wrapper"](model.apply_model, sampler_args(1, 24))
    assert out.shape[0] == 48 and model.calls > 0
    short = sampler_args(2, 4)               # 8 rows: one window, the noise was never reordered
    assert on.model_options["model_function_wrapper"](model.apply_model, short).shape[0] == 16
    off = patch(StandInPatcher(), False)
    assert off.model_options["model_function_wrapper"](model.apply_model, sampler_args(2, 12)).shape[0] == 48


def test_losing_the_sampling_object_to_a_later_node_is_reported_once(caplog):
    on = patch(StandInPatcher(), True)
    replaced = StandInModel(StandInSampling())
    with caplog.at_level("WARNING", logger="unet3d"):
        for _ in range(3):
            on.model_options["model_function_wrapper"](replaced.apply_model, sampler_args(1, 24))
    assert sum("noise is not rescheduled" in r.message for r in caplog.records) == 1
    caplog.clear()
    kept = StandInModel(on.object_patches["model_sampling"])
    with caplog.at_level("WARNING", logger="unet3d"):
        patch(StandInPatcher(), True).model_options["model_function_wrapper"](kept.apply_model, sampler_args(1, 24))
    assert not caplog.records


def test_the_layout_rule_decides_what_one_video_is():
    """Without a frame count every cond chunk is one video, so FreeNoise over all its rows is right."""
    layout = frame_layout(48, 2, None)
    fb.check_freenoise_videos(layout, 8)
    with pytest.raises(UNet3DError):
        fb.check_freenoise_videos(frame_layout(48, 2, 12), 8)
