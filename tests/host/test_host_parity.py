"""One KSampler step through ComfyUI (wrapper, frames fold, comfy.ops, comfy attention) equals the same step
computed with the pure ``unet3d`` model on the same weights, noise and text embeddings."""
import pytest

pytestmark = pytest.mark.host

TOL = 1e-4   # relative L2; the host uses its own attention kernel (sub-quadratic on CPU), the pure model SDPA


@pytest.mark.parametrize("cfg,split,calls", [(7.5, False, [2]), (7.5, True, [1, 1]), (1.0, False, [1])],
                         ids=["cfg7.5-one-batch", "cfg7.5-separate-cond-uncond", "cfg1"])
def test_one_ksampler_step_equals_the_pure_model(host, cfg, split, calls):
    prompt = host.prompt(seed=42, steps=1, cfg=cfg, frames=6, width=128, height=128)
    r = host.probe("one_step_parity", prompt=prompt, split_batches=split)
    print(f"parity cfg={cfg} split={split}: max_abs={r['max_abs']:.3g} (max |ref| {r['max_ref']:.3g}), "
          f"rel_l2={r['rel_l2']:.3g}, UNet calls with k={r['calls_k']}")
    assert r["calls_k"] == calls
    assert r["rel_l2"] < TOL, r
