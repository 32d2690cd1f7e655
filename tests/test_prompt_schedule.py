"""Prompt travel without a host: the schedule grammar and its errors, which keyframes each frame blends, per-frame
rows against a direct interpolation, token counts, the node with a stand-in CLIP, and the frame-count check. The host
tests check that each frame row of a real sampler call receives its own embedding."""
import pytest
import torch

from comfy_runner.offline import plugin_module
from unet3d.video.prompt_schedule import (
    FrameBlend,
    Keyframe,
    blend_rows,
    common_token_count,
    frame_blends,
    parse_schedule,
)

pt = plugin_module("nodes.prompt_travel")
ScheduleError = pt.parse_schedule.__globals__["PromptScheduleError"]   # the plugin package's own class


@pytest.mark.parametrize("text", [
    "0: a calm sea, 48: a storm at sea",
    "0: a calm sea\n48: a storm at sea\n",
    '"0": "a calm sea",\n"48": "a storm at sea"',
    "  0 : a calm sea ,\r\n  48:a storm at sea",
])
def test_the_documented_forms_parse_alike(text):
    assert parse_schedule(text, 96) == (Keyframe(0, "a calm sea"), Keyframe(48, "a storm at sea"))


def test_commas_and_ratios_inside_a_prompt_stay_text():
    keys = parse_schedule("0: a panda, sunset, cinematic, 16:9, 4k\n10: the panda, night", 24)
    assert keys == (Keyframe(0, "a panda, sunset, cinematic, 16:9, 4k"), Keyframe(10, "the panda, night"))


@pytest.mark.parametrize("text, frames, message", [
    ("0: a calm sea, 96: a storm", 96, "keyframe 96 .* beyond the video, whose frames are 0 to 95"),
    ("0: a calm sea, 99999999999999: a storm", 96, "keyframe 999999999999.* beyond the video"),
    ("48: a storm, 0: a calm sea", 96, "keyframe 0 .*follows keyframe 48 .*out of order"),
    ("0: a, 10: b, 10: c", 96, "second keyframe for that frame"),
    ("0: a calm sea, 48: ", 96, "keyframe 48 has no prompt text"),
    ('0: "", 4: a', 96, "keyframe 0 has no prompt text"),
    ("a calm sea", 96, "has no keyframe.*'0: a calm sea'"),
    ("", 96, "has no keyframe"),
    ("a calm sea\n10: a storm", 96, "'a calm sea' comes before the first keyframe"),
    ("0: a", 0, "frames must be an integer from 1"),
])
def test_malformed_schedules_name_the_keyframe_and_the_fix(text, frames, message):
    with pytest.raises(ScheduleError, match=message):
        pt.parse_schedule(text, frames)


def test_overlong_text_is_refused_before_parsing():
    with pytest.raises(ScheduleError, match="characters long"):
        pt.parse_schedule("0: a" + " x" * 40000, 8)


def expected_blend(frames, keyframe_frames, f, interpolation):
    """(first, second, weight) written from the documented rule."""
    if f <= keyframe_frames[0]:
        return 0, 0, 0.0
    if f >= keyframe_frames[-1]:
        return len(keyframe_frames) - 1, len(keyframe_frames) - 1, 0.0
    i = max(j for j, k in enumerate(keyframe_frames) if k <= f)
    if interpolation == "hold" or f == keyframe_frames[i]:
        return i, i, 0.0
    return i, i + 1, (f - keyframe_frames[i]) / (keyframe_frames[i + 1] - keyframe_frames[i])


@pytest.mark.parametrize("interpolation", ["linear", "hold"])
@pytest.mark.parametrize("keyframe_frames", [(0,), (5,), (0, 48), (4, 10, 11, 20), (0, 95)])
def test_each_frame_blends_its_neighbouring_keyframes(interpolation, keyframe_frames):
    keys = [Keyframe(f, f"p{f}") for f in keyframe_frames]
    blends = frame_blends(keys, 96, interpolation)
    assert len(blends) == 96
    for f, blend in enumerate(blends):
        first, second, weight = expected_blend(96, keyframe_frames, f, interpolation)
        assert (blend.first, blend.second) == (first, second) and blend.weight == pytest.approx(weight, abs=1e-12)


def test_frame_24_of_0_to_48_is_half_of_each():
    assert frame_blends([Keyframe(0, "a"), Keyframe(48, "b")], 96)[24] == FrameBlend(0, 1, 0.5)
    with pytest.raises(ScheduleError, match="interpolation must be one of"):
        pt.frame_blends([Keyframe(0, "a")], 8, "cubic")


def test_rows_are_the_direct_interpolation_and_keyframes_are_exact():
    gen = torch.Generator().manual_seed(3)
    a, b, c = (torch.randn(1, 77, 16, generator=gen) for _ in range(3))
    keys = [Keyframe(0, "a"), Keyframe(6, "b"), Keyframe(9, "c")]
    rows = blend_rows([a, b, c], frame_blends(keys, 12))
    assert rows.shape == (12, 77, 16)
    for f, (first, second, w) in enumerate([(a, a, 0)] + [(a, b, f / 6) for f in range(1, 6)] + [(b, b, 0)]
                                           + [(b, c, f / 3) for f in (1, 2)] + [(c, c, 0)] * 3):
        torch.testing.assert_close(rows[f], (first + w * (second - first))[0], rtol=0, atol=1e-6)
    assert torch.equal(rows[0], a[0]) and torch.equal(rows[6], b[0]) and torch.equal(rows[11], c[0])
    half = blend_rows([a.half(), b.half()], [FrameBlend(0, 1, 0.25)])
    assert half.dtype == torch.float16


def test_different_token_counts_repeat_to_their_common_multiple():
    short, long = torch.randn(1, 77, 8), torch.randn(1, 154, 8)
    rows = blend_rows([short, long], [FrameBlend(0, 0, 0.0), FrameBlend(1, 1, 0.0), FrameBlend(0, 1, 0.5)])
    assert rows.shape == (3, 154, 8)
    assert torch.equal(rows[0], torch.cat([short[0], short[0]])) and torch.equal(rows[1], long[0])
    assert common_token_count([77, 154, 231]) == 462
    with pytest.raises(ScheduleError, match="keyframe 0: 77 tokens, keyframe 9: 100 tokens.*common multiple is 7700"):
        pt.common_token_count([77, 100], ["keyframe 0", "keyframe 9"])


class StandInClip:
    """CLIP's tokenize / encode_from_tokens: a fixed embedding per text (77 tokens per 10 words), counting calls."""

    def __init__(self):
        self.encoded = []

    def tokenize(self, text):
        return {"text": text}

    def encode_from_tokens(self, tokens, return_pooled=False):
        text = tokens["text"]
        self.encoded.append(text)
        seed = sum(map(ord, text))
        gen = torch.Generator().manual_seed(seed)
        chunks = 1 + len(text.split()) // 10
        return torch.randn(1, 77 * chunks, 16, generator=gen), torch.randn(1, 16, generator=gen)


def test_node_encodes_each_prompt_once_and_marks_the_frame_count():
    clip = StandInClip()
    text = "0: a calm sea\n4: a storm at sea\n8: a calm sea"
    (entries,) = pt.UNet3DPromptTravel().encode(clip, text, 12, "linear")
    [[cond, options]] = entries
    assert sorted(clip.encoded) == ["a calm sea", "a storm at sea"]
    calm, calm_pooled = StandInClip().encode_from_tokens({"text": "a calm sea"})
    storm, _ = StandInClip().encode_from_tokens({"text": "a storm at sea"})
    assert cond.shape == (12, 77, 16) and options["pooled_output"].shape == (12, 16)
    assert options[pt.PROMPT_FRAMES_KEY] == 12
    assert torch.equal(cond[0], calm[0]) and torch.equal(cond[4], storm[0]) and torch.equal(cond[11], calm[0])
    torch.testing.assert_close(cond[2], (calm + 0.5 * (storm - calm))[0], rtol=0, atol=1e-6)
    assert torch.equal(options["pooled_output"][8], calm_pooled[0])


def test_node_reports_prompts_too_different_in_length():
    words = {n: " ".join(["w"] * n) for n in (10, 20, 40)}     # 2, 3 and 5 chunks in the stand-in: lcm 30 chunks
    with pytest.raises(ScheduleError, match="keyframe 0: 154 tokens, keyframe 5: 231 tokens, keyframe 7: 385 tok"):
        pt.UNet3DPromptTravel().encode(StandInClip(), f"0: {words[10]}\n5: {words[20]}\n7: {words[40]}", 8, "hold")


def test_frame_count_check_names_both_counts():
    noise = torch.zeros(48, 4, 2, 2)
    pt.check_prompt_frames(48, None, noise)
    pt.check_prompt_frames(24, 24, noise)                    # two videos of 24 frames
    with pytest.raises(pt.UNet3DError, match="gives 96 frames their prompts, but the sampler's latent holds 48 fr"):
        pt.check_prompt_frames(96, None, noise)
    with pytest.raises(pt.UNet3DError, match="holds 2 videos of 24 frames. Set the Prompt Travel node's frames to 24"):
        pt.check_prompt_frames(48, 24, noise)
