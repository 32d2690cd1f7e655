"""UNet3DFrameBatching's glue without a ComfyUI host: a stand-in ModelPatcher, the wrapper's slicing of ``c``
(per-frame conds, per-chunk lists, num_video_frames), chaining, and clone semantics. The host tests run it for real."""
import copy

import pytest
import torch

from comfy_runner.offline import plugin_module

fb = plugin_module("nodes.frame_batching")


class StandInPatcher:
    """The parts of comfy.model_patcher.ModelPatcher the node uses (clone deep-copies model_options)."""

    def __init__(self, model_options=None):
        self.model_options = model_options or {"transformer_options": {}}

    def clone(self):
        return StandInPatcher(copy.deepcopy(self.model_options))

    def set_model_unet_function_wrapper(self, fn):
        self.model_options["model_function_wrapper"] = fn


def patch(model, length=4, overlap=1, stride=1, closed=False, fuse="flat", cap=0):
    return fb.UNet3DFrameBatching().patch(model, length, overlap, stride, closed, fuse, cap)[0]


def sampler_args(chunks=2, frames=10, videos=1):
    rows = chunks * videos * frames
    ids = torch.arange(rows, dtype=torch.float32)
    x = ids.reshape(rows, 1, 1, 1).expand(rows, 4, 2, 2).contiguous()
    options = {"cond_or_uncond": [1, 0][:chunks], "sigmas": ids.clone(), "uuids": ["u1", "u0"][:chunks],
               "patches": {}}
    c = {"c_crossattn": ids.reshape(rows, 1, 1).expand(rows, 3, 2).contiguous(), "c_concat": x.clone(),
         "transformer_options": options, "control": object()}
    if videos > 1:
        c["num_video_frames"] = frames
    return {"input": x, "timestep": ids.clone(), "c": c, "cond_or_uncond": [1, 0][:chunks]}


def checking_apply_model(calls):
    def apply_model(x, t, c_crossattn=None, c_concat=None, transformer_options=None, control=None,
                    num_video_frames=None):
        ids = x[:, 0, 0, 0]
        assert torch.equal(t, ids) and torch.equal(c_crossattn[:, 0, 0], ids) and torch.equal(c_concat, x)
        assert torch.equal(transformer_options["sigmas"], ids)
        cu = transformer_options["cond_or_uncond"]
        assert transformer_options["uuids"] == [f"u{v}" for v in cu]
        calls.append((x.shape[0], list(cu), num_video_frames))
        return x * 3
    return apply_model


def test_patch_clones_and_never_touches_the_input_model():
    base = StandInPatcher()
    patched = patch(base)
    assert "model_function_wrapper" not in base.model_options
    assert isinstance(patched.model_options["model_function_wrapper"], fb.FrameBatchingWrapper)
    again = patched.clone()                            # ComfyUI deep-copies model_options on every clone
    assert again.model_options["model_function_wrapper"].settings == \
        patched.model_options["model_function_wrapper"].settings


def test_wrapper_slices_every_per_frame_cond_and_fuses():
    calls = []
    wrapper = patch(StandInPatcher(), length=4, overlap=1, cap=4).model_options["model_function_wrapper"]
    args = sampler_args()
    out = wrapper(checking_apply_model(calls), args)
    assert torch.allclose(out, args["input"] * 3)
    assert all(rows == 4 and len(cu) == 1 for rows, cu, _ in calls)
    assert args["c"]["transformer_options"]["cond_or_uncond"] == [1, 0], "the sampler's dict must stay untouched"


def test_several_videos_get_the_window_length_as_num_video_frames():
    calls = []
    wrapper = patch(StandInPatcher(), length=4, overlap=2, cap=8).model_options["model_function_wrapper"]
    args = sampler_args(videos=3, frames=6)
    out = wrapper(checking_apply_model(calls), args)
    assert torch.allclose(out, args["input"] * 3)
    assert {nvf for _, _, nvf in calls} == {4}
    assert max(rows for rows, _, _ in calls) <= 8


def test_one_window_passes_the_original_arguments():
    seen = []

    def apply_model(x, t, **c):
        seen.append((x, t, c))
        return x
    wrapper = patch(StandInPatcher(), length=24, overlap=8).model_options["model_function_wrapper"]
    args = sampler_args(frames=10)
    wrapper(apply_model, args)
    assert len(seen) == 1 and seen[0][0] is args["input"] and seen[0][1] is args["timestep"]
    assert seen[0][2]["c_crossattn"] is args["c"]["c_crossattn"]


def test_an_existing_wrapper_is_chained_inside():
    inner_calls = []

    class Previous:
        moved_to = None

        def __call__(self, apply_model, args):
            inner_calls.append(args["input"].shape[0])
            return apply_model(args["input"], args["timestep"], **args["c"])

        def to(self, device):
            self.moved_to = device
            return self
    base = StandInPatcher()
    base.set_model_unet_function_wrapper(Previous())
    patched = patch(base, length=4, overlap=1)
    wrapper = patched.model_options["model_function_wrapper"]
    assert isinstance(base.model_options["model_function_wrapper"], Previous)
    out = wrapper(checking_apply_model([]), sampler_args())
    assert inner_calls and all(rows == 8 for rows in inner_calls)   # both chunks, one window of 4 frames
    assert torch.allclose(out, sampler_args()["input"] * 3)
    assert wrapper.to("cuda:0") is wrapper and wrapper.previous.moved_to == "cuda:0"


@pytest.mark.parametrize("kwargs, message", [
    (dict(length=8, overlap=8), "context_overlap (8) must be smaller than context_length (8)"),
    (dict(length=24, overlap=8, cap=12), "max_batch_rows (12) is smaller than context_length (24)"),
    (dict(fuse="gaussian"), "fuse_method must be one of"),
])
def test_bad_settings_raise_before_sampling(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        patch(StandInPatcher(), **kwargs)


def test_node_interface():
    required = fb.UNet3DFrameBatching.INPUT_TYPES()["required"]
    assert list(required) == ["model", "context_length", "context_overlap", "context_stride", "closed_loop",
                              "fuse_method", "max_batch_rows"]
    assert required["fuse_method"][0] == ["flat", "pyramid", "overlap-linear"]
    assert all(spec[1].get("tooltip") for spec in required.values())
    assert fb.UNet3DFrameBatching.CATEGORY == "video/unet3d"
    assert fb.UNet3DFrameBatching.RETURN_TYPES == ("MODEL",) and fb.UNet3DFrameBatching.OUTPUT_TOOLTIPS
