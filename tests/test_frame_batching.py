"""Frame batching on the path ComfyUI runs: the node's wrapper (``nodes/frame_batching.py``) calling the model through
``nodes/unet_adapter.py``'s ComfyUNet3D, with the real tiny UNet3D. Checked against the pure model run window by
window and fused by hand; and the fold/unfold helper both use, directly. (The host tests run the same in ComfyUI.)"""
import pytest
import torch
from parity_helpers import TINY, randomize_

import unet3d
from comfy_runner.offline import plugin_module, sampler_call
from unet3d.video.folding import FrameLayout, fold, frame_layout, per_video, unfold
from unet3d.video.frame_batching import plan_calls
from unet3d.video.windows import WindowSettings

fb = plugin_module("nodes.frame_batching")
adapter = plugin_module("nodes.unet_adapter")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_(adapter.ComfyUNet3D(**TINY), seed=3).eval()


def folded_batch(chunks=2, videos=1, frames=8, tokens=5, per_frame_context=True, seed=7):
    """(x, timesteps, context) as the sampler hands them over: rows = chunks*videos*frames."""
    gen = torch.Generator().manual_seed(seed)
    rows = chunks * videos * frames
    x = torch.randn(rows, 4, 16, 16, generator=gen)
    t = torch.full((rows,), 500.0)
    ctx_rows = rows if per_frame_context else chunks * videos
    context = torch.randn(ctx_rows, tokens, TINY["cross_attention_dim"], generator=gen)
    return x, t, context


def sample_step(model, x, t, context, settings=None, cap=0, **kwargs):
    """One sampler evaluation, through the frame-batching wrapper when ``settings`` are given."""
    wrapper = None if settings is None else fb.FrameBatchingWrapper(settings, cap)
    return sampler_call(model, x, t, context, wrapper=wrapper, **kwargs)


def test_one_window_is_one_identical_call(model):
    x, t, context = folded_batch(frames=8)
    seen = []
    with torch.no_grad():
        direct = sample_step(model, x, t, context)
        batched = sample_step(model, x, t, context, settings=WindowSettings(8, 2), seen=seen)
        longer = sample_step(model, x, t, context, settings=WindowSettings(24, 8, 4, True, "flat"), cap=16)
    assert len(seen) == 1 and seen[0][0] is x and seen[0][1] is t and seen[0][2] is context
    assert torch.equal(batched, direct)
    assert torch.equal(longer, direct)


@pytest.mark.parametrize("cap", [8, 4, 6, 12])
def test_max_batch_rows_splitting_matches_unsplit(model, cap):
    x, t, context = folded_batch(frames=8)
    settings = WindowSettings(context_length=4, context_overlap=2, fuse_method="pyramid")
    seen = []
    with torch.no_grad():
        unsplit = sample_step(model, x, t, context, settings=settings, cap=0)
        split = sample_step(model, x, t, context, settings=settings, cap=cap, seen=seen)
    assert max(call[0].shape[0] for call in seen) <= cap
    assert (split - unsplit).abs().max().item() < 1e-6


def test_cap_alone_splits_cond_chunks_of_one_window(model):
    x, t, context = folded_batch(frames=6)
    with torch.no_grad():
        direct = sample_step(model, x, t, context)
        split = sample_step(model, x, t, context, settings=WindowSettings(context_length=24), cap=6)
    assert (split - direct).abs().max().item() < 1e-6


def fused_reference(model, x, t, context, chunks, settings):
    """Every window of every video run on the pure model on its own, fused by hand (no plugin code)."""
    pure = unet3d.UNet3DConditionModel(**TINY).eval()
    pure.load_state_dict(model.state_dict())
    frames = x.shape[0] // chunks
    out = torch.zeros_like(x)
    for video in range(chunks):
        rows = slice(video * frames, (video + 1) * frames)
        xv, cv = x[rows], context[rows]
        for window in settings.windows(frames):
            idx = list(window.frames)
            sample = xv[idx].transpose(0, 1)[None]
            pred = pure(sample, t[0:1], cv[idx], return_dict=False)[0]
            w = torch.tensor(window.weights).reshape(-1, 1, 1, 1)
            out[video * frames + torch.tensor(idx)] += pred[0].transpose(0, 1) * w
    return out


@pytest.mark.parametrize("settings", [WindowSettings(4, 2, 1, False, "pyramid"),
                                      WindowSettings(4, 1, 2, True, "overlap-linear")])
def test_windows_fuse_like_a_hand_made_reference(model, settings):
    x, t, context = folded_batch(frames=9)
    with torch.no_grad():
        got = sample_step(model, x, t, context, settings=settings, cap=8)
        want = fused_reference(model, x, t, context, 2, settings)
    assert (got - want).abs().max().item() < 1e-5


def test_several_videos_per_chunk_split_by_videos(model):
    x, t, context = folded_batch(chunks=2, videos=3, frames=6)
    settings = WindowSettings(4, 2)
    with torch.no_grad():
        unsplit = sample_step(model, x, t, context, frames_per_video=6, settings=settings, cap=0)
        split = sample_step(model, x, t, context, frames_per_video=6, settings=settings, cap=8)
    assert (split - unsplit).abs().max().item() < 1e-5   # calls of other sizes round differently
    calls = plan_calls(frame_layout(36, 2, 6), settings.windows(6), 8)
    assert all(len(c.videos) * c.frames <= 8 and len(c.chunks) == 1 for c in calls)


def test_fold_puts_video_v_frame_f_at_row_v_times_frames_plus_f():
    layout = frame_layout(24, 2, 4)                      # 2 chunks x 3 videos x 4 frames
    rows = torch.arange(24.0).reshape(24, 1, 1, 1).expand(24, 2, 3, 5).contiguous()
    videos = fold(rows, layout)
    assert videos.shape == (6, 2, 4, 3, 5)
    for v in range(6):
        for f in range(4):
            assert torch.equal(videos[v, :, f], rows[v * 4 + f])
    assert torch.equal(unfold(videos), rows)
    assert torch.equal(per_video(torch.arange(24.0), layout), torch.tensor([0.0, 4, 8, 12, 16, 20]))
    assert per_video(torch.tensor(3.0), layout).item() == 3.0


def test_layout_and_plan_errors():
    assert frame_layout(24, 2) == FrameLayout(2, 1, 12)
    assert frame_layout(24, 2, 4) == FrameLayout(2, 3, 4)
    assert frame_layout(24, 2, 5) == FrameLayout(2, 1, 12)   # does not divide: one video per chunk
    with pytest.raises(ValueError, match="25 latent rows cannot be split into 2 cond chunks"):
        frame_layout(25, 2)
    with pytest.raises(ValueError, match="max_batch_rows must be an integer >= 0"):
        plan_calls(frame_layout(24, 2), WindowSettings(4, 2).windows(12), -1)
