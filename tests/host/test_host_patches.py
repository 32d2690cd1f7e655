"""Patching: core FreeU / FreeU_V2 act on UNet3D models through the output_block_patch hooks, never change the
cached MODEL, and lowvram partial loading gives the same result as a full load."""
import pytest
import torch

pytestmark = pytest.mark.host

FREEU_V2 = ("FreeU_V2", {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2})
FREEU = ("FreeU", {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2})


def _cached(answer, node):
    return any(node in d.get("nodes", []) for e, d in answer.get("messages", []) if e == "execution_cached")


def test_cached_model_is_unchanged_by_a_graph_that_patches_it(host):
    # 128x128 px -> 16x16 latent: the deepest FreeU stage is 2x2 (FreeU_V2 is NaN on 1x1 maps).
    first, _ = host.sample(host.prompt(seed=7, steps=2))
    v2, answer_v2 = host.sample(host.prompt(seed=7, steps=2, patch=FREEU_V2))
    last, answer = host.sample(host.prompt(seed=7, steps=2))
    assert _cached(answer_v2, "1") and _cached(answer, "1"), "the loader's MODEL must be the cached one"
    assert not _cached(answer, "7"), "the sampler must have run again"
    assert torch.isfinite(v2).all()
    assert not torch.allclose(first, v2, atol=1e-3), "FreeU_V2 must change the output"
    assert torch.equal(first, last), "the cached MODEL changed after the FreeU_V2 graph"


def test_core_freeu_changes_the_output_and_removing_it_restores_it(host):
    base, _ = host.sample(host.prompt(seed=8, steps=2))
    freeu, _ = host.sample(host.prompt(seed=8, steps=2, patch=FREEU))
    v2, _ = host.sample(host.prompt(seed=8, steps=2, patch=FREEU_V2))
    back, _ = host.sample(host.prompt(seed=8, steps=2))
    assert torch.isfinite(freeu).all() and torch.isfinite(v2).all()
    assert not torch.allclose(base, freeu, atol=1e-3)
    assert not torch.allclose(freeu, v2, atol=1e-3)
    assert torch.equal(base, back)


def test_lowvram_partial_load_equals_full_load(host):
    r = host.probe("lowvram_equals_full", prompt=host.prompt(seed=9, steps=2))
    print(f"lowvram: budget {r['budget']} bytes, {r['streamed']}/{r['layers']} comfy.ops layers streamed, "
          f"max_abs {r['max_abs']}")
    assert 0 < r["streamed"] < r["layers"], "the budget must force a partial load"
    assert r["equal"], r


def test_memory_estimate_is_linear_in_frames_and_bounded_by_frame_batching(host):
    """ComfyUI decides full / partial loading from memory_required: it must grow with the frames of one call, and
    with frame batching (windows of 8) stay at one window's worth however long the video."""
    r = host.probe("memory_estimates", prompt=host.prompt(seed=3, steps=1))
    plain = {int(k): v for k, v in r["plain"].items()}
    windowed = {int(k): v for k, v in r["windowed"].items()}
    print(f"memory_required plain {plain}, windowed {windowed}")
    assert 0 < plain[8] < plain[32] < plain[64]
    assert plain[64] / plain[8] < 8 * 1.5, "activations must grow about linearly with frames, not quadratically"
    assert windowed[8] == plain[8]
    assert windowed[64] == windowed[32] == windowed[8]
