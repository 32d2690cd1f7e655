"""The pure frame-batching runner (unet3d.frame_batching) with the real tiny UNet3D: identity when one window holds
everything, splitting by max_batch_rows, per-frame context slicing, and fusion against a hand-made reference."""
import pytest
import torch

import unet3d
from parity_helpers import TINY, randomize_
from unet3d.frame_batching import FrameLayout, folded_model_apply, frame_layout, plan_calls, run_frame_batches
from unet3d.windows import WindowSettings


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model is faster on one thread, and the test box's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_(unet3d.UNet3DConditionModel(**TINY), seed=3).eval()


def folded_batch(chunks=2, videos=1, frames=8, tokens=5, per_frame_context=True, seed=7):
    """(x, timesteps, context) in the folded layout: rows = chunks*videos*frames."""
    gen = torch.Generator().manual_seed(seed)
    rows = chunks * videos * frames
    x = torch.randn(rows, 4, 16, 16, generator=gen)
    t = torch.full((rows,), 500.0)
    ctx_rows = rows if per_frame_context else chunks * videos
    context = torch.randn(ctx_rows, tokens, TINY["cross_attention_dim"], generator=gen)
    return x, t, context


def test_one_window_is_one_identical_call(model):
    x, t, context = folded_batch(frames=8)
    apply = folded_model_apply(model)
    seen = []

    def recording(*args):
        seen.append(args)
        return apply(*args)
    with torch.no_grad():
        direct = apply(x, t, context, [1, 0])
        batched = run_frame_batches(recording, x, t, context, [1, 0], WindowSettings(8, 2))
        longer = run_frame_batches(apply, x, t, context, [1, 0], WindowSettings(24, 8, 4, True, "flat"), 16)
    assert len(seen) == 1 and seen[0][0] is x and seen[0][1] is t and seen[0][2] is context
    assert torch.equal(batched, direct)
    assert torch.equal(longer, direct)


@pytest.mark.parametrize("cap", [8, 4, 6, 12])
def test_max_batch_rows_splitting_matches_unsplit(model, cap):
    x, t, context = folded_batch(frames=8)
    settings = WindowSettings(context_length=4, context_overlap=2, fuse_method="pyramid")
    apply = folded_model_apply(model)
    sizes = []

    def recording(*args):
        sizes.append(args[0].shape[0])
        return apply(*args)
    with torch.no_grad():
        unsplit = run_frame_batches(apply, x, t, context, [1, 0], settings, 0)
        split = run_frame_batches(recording, x, t, context, [1, 0], settings, cap)
    assert max(sizes) <= cap
    assert (split - unsplit).abs().max().item() < 1e-6


def test_cap_alone_splits_cond_chunks_of_one_window(model):
    x, t, context = folded_batch(frames=6)
    apply = folded_model_apply(model)
    with torch.no_grad():
        direct = apply(x, t, context, [1, 0])
        split = run_frame_batches(apply, x, t, context, [1, 0], WindowSettings(context_length=24), 6)
    assert (split - direct).abs().max().item() < 1e-6


def fused_reference(model, x, t, context, chunks, settings):
    """Every window of every video run on its own, fused by hand (no runner code)."""
    frames = x.shape[0] // chunks
    out = torch.zeros_like(x)
    for video in range(chunks):
        rows = slice(video * frames, (video + 1) * frames)
        xv, cv = x[rows], context[rows]
        for window in settings.windows(frames):
            idx = list(window.frames)
            sample = xv[idx].transpose(0, 1)[None]
            pred = model(sample, t[0:1], cv[idx], return_dict=False)[0][0].transpose(0, 1)
            w = torch.tensor(window.weights).reshape(-1, 1, 1, 1)
            out[video * frames + torch.tensor(idx)] += pred * w
    return out


@pytest.mark.parametrize("settings", [WindowSettings(4, 2, 1, False, "pyramid"),
                                      WindowSettings(4, 1, 2, True, "overlap-linear")])
def test_windows_fuse_like_a_hand_made_reference(model, settings):
    x, t, context = folded_batch(frames=9)
    with torch.no_grad():
        got = run_frame_batches(folded_model_apply(model), x, t, context, [1, 0], settings, 8)
        want = fused_reference(model, x, t, context, 2, settings)
    assert (got - want).abs().max().item() < 1e-5


def test_per_frame_context_rows_follow_their_frames():
    chunks, frames = 2, 10
    rows = chunks * frames
    x = torch.arange(rows, dtype=torch.float32).reshape(rows, 1, 1, 1).expand(rows, 4, 2, 2).contiguous()
    t = torch.arange(rows, dtype=torch.float32)
    context = torch.arange(rows, dtype=torch.float32).reshape(rows, 1, 1).expand(rows, 3, 2).contiguous()
    calls = []

    def checking(x_rows, t_rows, ctx_rows, cond_or_uncond):
        ids = x_rows[:, 0, 0, 0]
        assert torch.equal(t_rows, ids) and torch.equal(ctx_rows[:, 0, 0], ids)
        per_chunk = x_rows.shape[0] // len(cond_or_uncond)
        for i, c in enumerate(cond_or_uncond):
            assert (ids[i * per_chunk:(i + 1) * per_chunk] // frames).eq([1, 0].index(c)).all()
        calls.append((ids.tolist(), list(cond_or_uncond)))
        return x_rows * 2
    out = run_frame_batches(checking, x, t, context, [1, 0], WindowSettings(4, 1, 1, False, "flat"), 4)
    assert torch.allclose(out, x * 2)                   # identity model: fused weights sum to one per frame
    assert all(len(ids) == 4 for ids, _ in calls)
    assert {tuple(cu) for _, cu in calls} == {(1,), (0,)}
    assert calls[0][0] == [0, 1, 2, 3]


def test_per_video_context_is_taken_per_video():
    x = torch.zeros(12, 4, 2, 2)
    context = torch.tensor([[[10.0]], [[20.0]]])        # one row per video (2 chunks x 6 frames)
    seen = []

    def recording(x_rows, t_rows, ctx_rows, cond_or_uncond):
        seen.append((ctx_rows.flatten().tolist(), list(cond_or_uncond)))
        return x_rows
    run_frame_batches(recording, x, torch.zeros(12), context, [1, 0], WindowSettings(4, 2), 4)
    assert {tuple(c) for c, _ in seen} == {(10.0,), (20.0,)}
    assert all((c == [10.0]) == (cu == [1]) for c, cu in seen)


def test_several_videos_per_chunk_split_by_videos(model):
    x, t, context = folded_batch(chunks=2, videos=3, frames=6)
    settings = WindowSettings(4, 2)
    apply = folded_model_apply(model)
    with torch.no_grad():
        unsplit = run_frame_batches(apply, x, t, context, [1, 0], settings, 0, num_video_frames=6)
        split = run_frame_batches(apply, x, t, context, [1, 0], settings, 8, num_video_frames=6)
    assert (split - unsplit).abs().max().item() < 1e-6
    calls = plan_calls(frame_layout(36, 2, 6), settings.windows(6), 8)
    assert all(len(c.videos) * c.frames <= 8 and len(c.chunks) == 1 for c in calls)


def test_plan_and_layout_errors():
    assert frame_layout(24, 2) == FrameLayout(2, 1, 12)
    assert frame_layout(24, 2, 4) == FrameLayout(2, 3, 4)
    assert frame_layout(24, 2, 5) == FrameLayout(2, 1, 12)   # does not divide: one video per chunk, as the model
    with pytest.raises(ValueError, match="25 latent rows for 2 cond chunks"):
        frame_layout(25, 2)
    with pytest.raises(ValueError, match="max_batch_rows must be an integer >= 0"):
        plan_calls(frame_layout(24, 2), WindowSettings(4, 2).windows(12), -1)
