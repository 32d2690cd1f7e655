"""Frame window layout and fuse weights (unet3d.video.windows): pure maths, no torch model, no ComfyUI."""
import itertools

import pytest

from unet3d.video.windows import FUSE_METHODS, WindowSettings, frame_windows, stride_levels, window_starts

LAYOUTS = [  # (num_frames, context_length, context_overlap, context_stride, closed_loop)
    (64, 24, 8, 1, False), (64, 24, 8, 1, True), (25, 24, 8, 1, False), (25, 24, 8, 1, True),
    (100, 16, 4, 3, False), (100, 16, 4, 3, True), (192, 24, 8, 2, False), (48, 24, 0, 1, False),
    (50, 24, 23, 1, True), (37, 5, 2, 4, False), (96, 24, 8, 3, True),
]


def coverage(windows, num_frames):
    totals = [0.0] * num_frames
    counts = [0] * num_frames
    for window in windows:
        assert len(set(window.frames)) == len(window.frames), "a window holds a frame twice"
        for frame, weight in zip(window.frames, window.weights):
            totals[frame] += weight
            counts[frame] += 1
    return totals, counts


@pytest.mark.parametrize("fuse", FUSE_METHODS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_frame_covered_and_weights_sum_to_one(layout, fuse):
    num_frames, length, overlap, stride, closed = layout
    windows = frame_windows(num_frames, length, overlap, stride, closed, fuse)
    totals, counts = coverage(windows, num_frames)
    assert min(counts) >= 1
    assert all(abs(t - 1.0) < 1e-12 for t in totals), totals
    assert all(w > 0 for window in windows for w in window.weights)
    assert all(len(window.frames) == length for window in windows)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_neighbouring_windows_overlap_by_at_least_context_overlap(layout):
    num_frames, length, overlap, _, closed = layout
    contiguous = [w.frames for w in frame_windows(num_frames, length, overlap, 1, closed, "flat")]
    pairs = zip(contiguous, contiguous[1:] + (contiguous[:1] if closed else []))
    for a, b in pairs:
        assert len(set(a) & set(b)) >= overlap


def test_closed_loop_covers_the_seam():
    windows = frame_windows(64, 24, 8, 1, True, "pyramid")
    seams = [w.frames for w in windows if 63 in w.frames and 0 in w.frames]
    assert seams, "no window spans the last and first frames"
    frames = seams[0]
    i = frames.index(63)
    assert frames[i + 1] == 0, "the wrap-around window must be continuous across the seam"
    open_windows = frame_windows(64, 24, 8, 1, False, "pyramid")
    assert not any(63 in w.frames and 0 in w.frames for w in open_windows)
    assert open_windows[0].frames[0] == 0 and open_windows[-1].frames[-1] == 63


def test_stride_adds_strided_windows_over_every_frame():
    windows = frame_windows(96, 16, 4, 3, False, "flat")
    steps = {w.frames[1] - w.frames[0] for w in windows}
    assert steps == {1, 2, 4}
    for step in (2, 4):
        level = [w.frames for w in windows if w.frames[1] - w.frames[0] == step]
        assert all(all(b - a == step for a, b in zip(f, f[1:])) for f in level)
        assert set(itertools.chain(*level)) == set(range(96)), f"stride {step} level misses frames"
    assert stride_levels(96, 16, 3) == [1, 2, 4]
    assert stride_levels(40, 16, 3) == [1, 2]          # 4 * 16 > 40: no full window at step 4
    assert stride_levels(96, 16, 1) == [1]


def test_deterministic():
    a = frame_windows.__wrapped__(100, 16, 4, 3, True, "overlap-linear")
    b = frame_windows.__wrapped__(100, 16, 4, 3, True, "overlap-linear")
    assert a == b
    assert WindowSettings(16, 4, 3, True, "overlap-linear").windows(100) == a


@pytest.mark.parametrize("fuse", FUSE_METHODS)
@pytest.mark.parametrize("num_frames", [1, 7, 24])
def test_context_length_at_least_frames_gives_one_window_in_order(num_frames, fuse):
    for stride, closed in [(1, False), (4, True)]:
        (window,) = frame_windows(num_frames, 24, 8, stride, closed, fuse)
        assert window.frames == tuple(range(num_frames))
        assert window.weights == (1.0,) * num_frames


def test_fuse_shapes():
    (first, middle, *_rest) = frame_windows(64, 24, 8, 1, False, "pyramid")
    assert middle.weights[0] < middle.weights[8] and middle.weights[-1] < middle.weights[-9]
    assert first.weights[0] == 1.0                     # the video's first frame is in no other window
    linear = frame_windows(64, 24, 8, 1, False, "overlap-linear")[1]
    overlap = len(set(linear.frames) & set(frame_windows(64, 24, 8, 1, False, "overlap-linear")[0].frames))
    assert all(a < b for a, b in zip(linear.weights[:overlap], linear.weights[1:overlap]))   # ramps up


def test_window_starts_spread_evenly():
    assert window_starts(64, 24, 8, closed=False) == [0, 13, 27, 40]
    assert window_starts(64, 24, 8, closed=True) == [0, 16, 32, 48]


@pytest.mark.parametrize("kwargs, message", [
    (dict(context_length=24, context_overlap=24), "context_overlap (24) must be smaller than context_length (24)"),
    (dict(context_length=8, context_overlap=30), "Use at most 7"),
    (dict(context_length=0), "context_length must be a positive integer"),
    (dict(context_overlap=-1), "context_overlap must be an integer >= 0"),
    (dict(context_stride=0), "context_stride must be an integer >= 1"),
    (dict(fuse_method="gauss"), "fuse_method must be one of ['flat', 'pyramid', 'overlap-linear']"),
    (dict(context_length=2.5), "context_length must be a positive integer"),
])
def test_bad_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError) as err:
        WindowSettings(**kwargs)
    assert message in str(err.value)


def test_bad_frame_count():
    with pytest.raises(ValueError, match="num_frames must be a positive integer"):
        frame_windows(0)
