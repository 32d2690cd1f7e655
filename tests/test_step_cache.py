"""The step cache (``unet3d/network/step_cache.py``): cached evaluations against the plain model.

Oracles: the plain forward, bit for bit, wherever the cache promises it (no plan, plans that do not reuse, a cached
evaluation on the very input its features came from); and, for a cached evaluation on a new input, the plain forward
of that input with the kept features put in place by a decoder hook (``unet3d.network.hooks``) at the concatenation
where the cached path starts: the shallow layers then run on the path every plain call runs.
"""
import copy

import pytest
import torch
from parity_helpers import TINY, inputs, randomize_, rel_err

import unet3d
from unet3d.network.hooks import UNetHooks
from unet3d.network.step_cache import FeatureSlot, StepCache, StepCachePlan

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = dict(TINY, layers_per_block=2)   # 3 layers in the last up block: depths 1, 2, 3 all differ


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_(unet3d.UNet3DConditionModel(**CFG), seed=5).eval()


@pytest.fixture(scope="module")
def data():
    x, context = inputs(2, 4)
    gen = torch.Generator().manual_seed(9)
    return x, context, x + 0.2 * torch.randn(x.shape, generator=gen)


def run(model, x, t, context, plan=None, **options):
    with torch.no_grad():
        return model(x, t, context, call_options={"step_cache": plan, **options}).sample


class SwapAt(UNetHooks):
    """Records ``h`` before decoder concatenation ``index`` and, when ``replace`` is given, puts it there instead."""

    def __init__(self, index, replace=None):
        self.index, self.replace, self.seen = index, replace, None

    def decoder_concat(self, h, skip, index):
        if index == self.index:
            self.seen = h
            if self.replace is not None:
                h = self.replace
        return h, skip


def first_fresh_concat(model, depth):
    last = model.up_blocks[-1]
    count = len(last.resnets)
    return last.first_concat + count - (count if depth == 0 else depth)


def test_plans_that_do_not_reuse_are_the_plain_forward(model, data):
    x, context, _ = data
    plain = run(model, x, 10, context)
    slot = FeatureSlot()
    assert torch.equal(run(model, x, 10, context, StepCachePlan(slot, reuse=False, keep=True)), plain)
    assert slot.features is not None
    assert torch.equal(run(model, x, 10, context, StepCachePlan(slot, reuse=False, keep=False)), plain)
    assert slot.features is None                         # keep=False empties the slot
    assert torch.equal(run(model, x, 10, context, StepCachePlan(FeatureSlot(), reuse=True)), plain)  # empty: full


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_cached_evaluation_on_its_own_input_is_exact(model, data, depth):
    x, context, _ = data
    plain = run(model, x, 10, context)
    slot = FeatureSlot()
    run(model, x, 10, context, StepCachePlan(slot, reuse=False, keep=True, depth=depth))
    assert torch.equal(run(model, x, 10, context, StepCachePlan(slot, reuse=True, keep=True, depth=depth)), plain)


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_cached_evaluation_equals_plain_forward_with_kept_features_swapped_in(model, data, depth):
    x, context, x2 = data
    index = first_fresh_concat(model, depth)
    record = SwapAt(index)
    with torch.no_grad():
        model(x, 10, context, call_options={"hooks": record})
    slot = FeatureSlot()
    run(model, x, 10, context, StepCachePlan(slot, reuse=False, keep=True, depth=depth))
    assert torch.equal(slot.features, record.seen)       # what a full step keeps is the input of that layer
    cached = run(model, x2, 30, context, StepCachePlan(slot, reuse=True, keep=False, depth=depth))
    with torch.no_grad():
        want = model(x2, 30, context, call_options={"hooks": SwapAt(index, record.seen)}).sample
    assert torch.equal(cached, want)
    assert slot.features is None
    assert rel_err(cached, run(model, x2, 30, context)) > 1e-4   # it did reuse something


def test_cached_evaluation_composes_with_slicing_chunking_freeu(model, data):
    x, context, _ = data
    options = {"attention_slice": "max", "ff_chunk": (1, 1), "freeu": {"s1": 0.9, "s2": 0.2, "b1": 1.2, "b2": 1.4}}
    plain = run(model, x, 10, context, **options)
    slot = FeatureSlot()
    assert torch.equal(run(model, x, 10, context, StepCachePlan(slot, keep=True), **options), plain)
    assert torch.equal(run(model, x, 10, context, StepCachePlan(slot, reuse=True), **options), plain)


def test_features_of_another_size_are_not_reused(model, data):
    x, context, _ = data
    slot = FeatureSlot()
    run(model, x, 10, context, StepCachePlan(slot, keep=True))
    one_video = x[:1]
    got = run(model, one_video, 10, context[:1], StepCachePlan(slot, reuse=True, keep=True))
    assert torch.equal(got, run(model, one_video, 10, context[:1]))
    assert slot.features.shape[0] == one_video.shape[0] * one_video.shape[2]   # replaced by this call's own


def test_additional_residuals_run_in_full(model, data):
    x, context, x2 = data
    slot = FeatureSlot()
    run(model, x, 10, context, StepCachePlan(slot, keep=True))
    mid = torch.zeros(8, 64, 8, 8)
    with torch.no_grad():
        got = model(x2, 10, context, mid_block_additional_residual=mid,
                    call_options={"step_cache": StepCachePlan(slot, reuse=True)}).sample
    assert torch.equal(got, run(model, x2, 10, context))


class TemporalInRecord:
    """Forward hooks on ``transformer_in``: record what it added to its input, or make it add ``replace`` instead;
    a hook on its GroupNorm counts how often it really ran. (No hook on the layers inside: those would turn off
    the narrow-side fold, ``unet3d/network/narrow_side.py``, and change the last bits.)"""

    def __init__(self, model, replace=None):
        self.replace, self.delta, self.runs = replace, None, 0
        self.handles = [model.transformer_in.register_forward_hook(self.after),
                        model.transformer_in.norm.register_forward_hook(self.count)]

    def after(self, module, args, out):
        self.delta = out - args[0]
        return None if self.replace is None else args[0] + self.replace

    def count(self, *_):
        self.runs += 1

    def remove(self):
        for handle in self.handles:
            handle.remove()


def test_reuse_temporal_in_full_calls_are_plain_and_keep_the_delta(model, data):
    x, context, _ = data
    record = TemporalInRecord(model)
    plain = run(model, x, 10, context)
    record.remove()
    slot = FeatureSlot()
    got = run(model, x, 10, context, StepCachePlan(slot, keep=True, reuse_temporal_in=True))
    assert torch.equal(got, plain)
    b, _, f, h, w = x.shape
    kept = slot.temporal_in.reshape(b * f, -1, h, w)
    assert rel_err(kept, record.delta) < 1e-6
    # on its own input a cached call is the plain forward bit for bit: the delta is added exactly as the layer adds it
    assert torch.equal(run(model, x, 10, context, StepCachePlan(slot, reuse=True, reuse_temporal_in=True)), plain)
    run(model, x, 10, context, StepCachePlan(slot, keep=False, reuse_temporal_in=True))
    assert slot.temporal_in is None and slot.features is None     # keep=False empties both


@pytest.mark.parametrize("depth", [1, 3])
def test_reuse_temporal_in_cached_call_skips_the_layer_and_adds_the_kept_delta(model, data, depth):
    x, context, x2 = data
    index = first_fresh_concat(model, depth)
    swap = SwapAt(index)
    record = TemporalInRecord(model)
    with torch.no_grad():
        model(x, 10, context, call_options={"hooks": swap})
    record.remove()
    slot = FeatureSlot()
    run(model, x, 10, context, StepCachePlan(slot, keep=True, depth=depth, reuse_temporal_in=True))
    count = TemporalInRecord(model)
    cached = run(model, x2, 30, context, StepCachePlan(slot, reuse=True, depth=depth, reuse_temporal_in=True))
    count.remove()
    assert count.runs == 0                                   # transformer_in did not run
    oracle = TemporalInRecord(model, replace=record.delta)
    with torch.no_grad():
        want = model(x2, 30, context, call_options={"hooks": SwapAt(index, swap.seen)}).sample
    oracle.remove()
    assert rel_err(cached, want) < 1e-5
    without = run(model, x2, 30, context, StepCachePlan(slot, reuse=True, depth=depth))
    assert rel_err(cached, without) > 1e-4                   # the kept delta was used, not a fresh one


def test_reuse_temporal_in_delta_of_other_clips_is_not_used(model, data):
    x, context, x2 = data
    slot = FeatureSlot()
    run(model, x, 10, context, StepCachePlan(slot, keep=True, reuse_temporal_in=True))
    # the same rows (2 clips x 4 frames = 1 clip x 8 frames) and size: the deep features fit, the delta does not
    one_clip = x2.permute(0, 2, 1, 3, 4).reshape(1, -1, *x2.shape[1:2], *x2.shape[3:]).permute(0, 2, 1, 3, 4)
    assert one_clip.shape[2] == 2 * x2.shape[2]
    count = TemporalInRecord(model)
    got = run(model, one_clip, 30, context[:1], StepCachePlan(slot, reuse=True, reuse_temporal_in=True))
    count.remove()
    assert count.runs == 1
    assert torch.equal(got, run(model, one_clip, 30, context[:1], StepCachePlan(slot, reuse=True)))


def test_bad_plan_values_are_clear_errors(model, data):
    x, context, _ = data
    with pytest.raises(ValueError, match="StepCachePlan"):
        run(model, x, 10, context, plan="every 3")
    with pytest.raises(ValueError, match="depth"):
        StepCachePlan(depth=-1)
    with pytest.raises(ValueError, match="interval"):
        StepCache(0)
    with pytest.raises(ValueError, match="reuse_temporal_in"):
        StepCachePlan(reuse_temporal_in="yes")


# ------------------------------------------------------------------------------------------------ the schedule
def kinds(plans):
    return "".join("." if p is None else ("c" if p.reuse else "F") for p in plans)


def test_schedule_full_every_interval_inside_the_window():
    cache = StepCache(3, level_start=8.0, level_end=2.0)
    plans = [cache.plan(level) for level in (10, 9, 8, 7, 6, 5, 4, 3, 2, 1)]
    assert kinds(plans) == "..FccFccF."
    assert cache.kept == 0                               # leaving the window drops the features


def test_interval_one_is_always_plain():
    cache = StepCache(1)
    assert kinds(cache.plan(level) for level in (9, 8, 7)) == "..."


def test_each_call_of_a_step_has_its_own_slot():
    cache = StepCache(2)
    step0 = [cache.plan(9.0, key) for key in ("window a", "window b", "window a")]
    step1 = [cache.plan(8.0, key) for key in ("window a", "window b", "window a")]
    assert kinds(step0) == "FFF" and kinds(step1) == "ccc"
    assert len({id(p.slot) for p in step0}) == 3         # same key twice in a step: two call sites
    assert [p.slot for p in step0] == [p.slot for p in step1]
    assert cache.plan(7.0, ("cond", "uncond")).slot not in [p.slot for p in step0]


def test_a_new_run_starts_over():
    cache = StepCache(3)
    first = [cache.plan(level) for level in (9, 8, 7, 6)]
    first[-1].slot.features = torch.zeros(1)
    again = [cache.plan(level) for level in (9, 8)]      # the level went up: a new run
    assert kinds(first) == "FccF" and kinds(again) == "Fc" and cache.kept == 0
    cache.plan(8, first=True)   # another call at the first level (uncond after cond) is the same step
    assert cache.kept == 0 and cache.plan(7).reuse is True


def test_last_level_keeps_nothing_and_copies_start_empty():
    cache = StepCache(2)
    cache.plan(9).slot.features = torch.zeros(1)
    assert cache.kept == 1
    clone = copy.deepcopy(cache)
    assert clone.kept == 0 and (clone.interval, clone.depth, clone.reuse_temporal_in) == (2, 0, False)
    assert copy.deepcopy(StepCache(3, 1, reuse_temporal_in=True)).plan(9).reuse_temporal_in is True
    assert cache.plan(8, last=True).keep is False


def test_sampling_loop_with_interval_one_equals_plain_and_caching_stays_close(model, data):
    x, context, _ = data
    levels = [900, 700, 500, 300, 100]

    def sample(cache):
        h = x.clone()
        for t in levels:
            plan = None if cache is None else cache.plan(t)
            h = h - 0.1 * run(model, h, t, context, plan)
        return h

    plain = sample(None)
    assert torch.equal(sample(StepCache(1)), plain)
    assert torch.equal(sample(StepCache(1, reuse_temporal_in=True)), plain)
    cached = sample(StepCache(2))
    assert torch.isfinite(cached).all() and 0 < rel_err(cached, plain) < 0.5
    more = sample(StepCache(2, reuse_temporal_in=True))
    assert torch.isfinite(more).all() and 0 < rel_err(more, plain) < 0.5 and not torch.equal(more, cached)
