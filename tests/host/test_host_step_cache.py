"""UNet3D Step Cache in a real ComfyUI graph: exact when off, acting when on, composing with the other UNet3D patch
nodes, and no result that depends on what ran before (the cache keeps features only within one sampler run).

The cached evaluation itself is checked against the plain model in ``tests/test_step_cache.py``; here the oracle is
the same graph without the node, and the same graph run again after other prompts."""
import pytest
import torch

pytestmark = pytest.mark.host

STEPS = 6


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _cache(interval, **extra):
    return ("UNet3DStepCache", {"interval": interval, "start_percent": 0.0, "end_percent": 1.0, **extra})


def test_interval_one_is_the_plain_model_bit_for_bit(host):
    plain = host.sample(host.prompt(seed=71, steps=STEPS, frames=4))[0]
    off = host.sample(host.prompt(seed=71, steps=STEPS, frames=4, patch=_cache(1)))[0]
    assert torch.equal(off, plain)


def test_caching_acts_stays_close_and_does_not_depend_on_earlier_prompts(host):
    plain = host.sample(host.prompt(seed=72, steps=STEPS, frames=4))[0]
    first = host.sample(host.prompt(seed=72, steps=STEPS, frames=4, patch=_cache(3)))[0]
    host.sample(host.prompt(seed=73, steps=STEPS + 1, frames=4, patch=_cache(3)))   # another run on the same MODEL
    host.sample(host.prompt(seed=74, steps=2, frames=4, width=64, patch=_cache(3)))  # another size
    again = host.sample(host.prompt(seed=72, steps=STEPS, frames=4, patch=_cache(3)))[0]
    assert torch.isfinite(first).all()
    assert 1e-4 < _rel(first, plain) < 0.5, _rel(first, plain)
    assert torch.equal(again, first), "the same graph must give the same latent whatever ran before it"


def test_reuse_temporal_in_acts_beyond_the_default_and_is_off_at_interval_one(host):
    plain = host.sample(host.prompt(seed=78, steps=STEPS, frames=4))[0]
    off = host.sample(host.prompt(seed=78, steps=STEPS, frames=4, patch=_cache(1, reuse_temporal_in=True)))[0]
    default = host.sample(host.prompt(seed=78, steps=STEPS, frames=4, patch=_cache(3)))[0]
    more = host.sample(host.prompt(seed=78, steps=STEPS, frames=4, patch=_cache(3, reuse_temporal_in=True)))[0]
    again = host.sample(host.prompt(seed=78, steps=STEPS, frames=4, patch=_cache(3, reuse_temporal_in=True)))[0]
    assert torch.equal(off, plain)
    assert torch.isfinite(more).all() and 1e-4 < _rel(more, plain) < 0.5, _rel(more, plain)
    assert not torch.equal(more, default)
    assert torch.equal(again, more)


def test_window_outside_the_run_is_the_plain_model(host):
    plain = host.sample(host.prompt(seed=75, steps=STEPS, frames=4))[0]
    late = host.sample(host.prompt(seed=75, steps=STEPS, frames=4,
                                   patch=("UNet3DStepCache", {"interval": 3, "start_percent": 1.0,
                                                              "end_percent": 1.0})))[0]
    assert torch.equal(late, plain)


def test_composes_with_frame_batching_freeu_slicing_and_chunking(host):
    chain = [("UNet3DFreeU", {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}),
             ("UNet3DAttentionSlicing", {"slice_size": "max"}),
             ("UNet3DForwardChunking", {"chunk_size": 2, "dim": "sequence"}),
             ("UNet3DFrameBatching", {"context_length": 4, "context_overlap": 2, "context_stride": 1,
                                      "closed_loop": False, "fuse_method": "pyramid", "max_batch_rows": 8})]
    without = host.sample(host.prompt(seed=76, steps=STEPS, frames=8, patch=chain))[0]
    off = host.sample(host.prompt(seed=76, steps=STEPS, frames=8, patch=chain + [_cache(1)]))[0]
    cached = host.sample(host.prompt(seed=76, steps=STEPS, frames=8, patch=chain + [_cache(2)]))[0]
    assert torch.equal(off, without)
    assert torch.isfinite(cached).all()
    assert 1e-4 < _rel(cached, without) < 0.5, _rel(cached, without)


def test_start_after_end_is_a_setting_error_naming_both(host):
    answer = host.proc.run(host.prompt(seed=77, steps=2, frames=4,
                                       patch=_cache(3, start_percent=0.8, end_percent=0.2)), check=False)
    assert not answer["ok"]
    error = answer["error"]
    assert error.get("exception_type", "").endswith(".SettingError"), error
    assert "start_percent (0.8)" in error["exception_message"] and "end_percent (0.2)" in error["exception_message"]
