"""The neutral hooks of unet3d (every transformer reports where it sits, a hook sees every attention and can change
it) and ComfyUI's patch protocol on top of them (``nodes/patch_protocol.py``), without a host: the model's output
against hand-made computations on the same tiny model. Real ComfyUI nodes: tests/host/test_host_core_nodes.py."""
import pytest
import torch
import torch.nn.functional as F
from parity_helpers import randomize_

from comfy_runner.offline import plugin_module

protocol = plugin_module("nodes.patch_protocol")
# the unet3d the plugin imports (the same classes the protocol's hooks derive from)
UNet3DConditionModel = plugin_module("unet3d").UNet3DConditionModel
LayerSite, UNetHooks = plugin_module("unet3d.network.hooks").LayerSite, plugin_module("unet3d.network.hooks").UNetHooks
CONFIG = dict(block_out_channels=(32, 64), norm_num_groups=8, layers_per_block=1, cross_attention_dim=16,
              attention_head_dim=8, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
              up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_(UNet3DConditionModel(**CONFIG), seed=2).eval()


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(2, 4, 3, 8, 8, generator=gen), torch.randn(2, 5, 16, generator=gen)


def run(model, inputs, **call_options):
    sample, context = inputs
    with torch.no_grad():
        return model(sample, 500, context, call_options=call_options or None).sample


def plain_attention(q, k, v, heads):
    b = q.shape[0]
    split = [t.view(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v)]
    return F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(q.shape)


def plain_run(model, inputs, **call_options):
    """``run`` with a no-op forward hook on ``transformer_in``'s ``to_q``: the narrow-side fold
    (unet3d/network/narrow_side.py) steps aside for a hooked layer as it does for hooks that see attention, so this
    is the path a call with such hooks takes, bit for bit."""
    handle = model.transformer_in.transformer_blocks[0].attn1.to_q.register_forward_hook(lambda *args: None)
    try:
        return run(model, inputs, **call_options)
    finally:
        handle.remove()


class Recording(UNetHooks):
    wants_attention = True

    def __init__(self):
        self.calls = []

    def attention(self, site, which, layer, hidden, context, run, feature_shape):
        self.calls.append((site, which, hidden.shape[1], tuple(feature_shape)))
        return run(hidden, context, None)


def test_a_hook_sees_every_attention_where_it_sits_and_changes_nothing_by_default(model, inputs):
    hooks = Recording()
    assert torch.equal(run(model, inputs, hooks=hooks), plain_run(model, inputs))
    sites = {site for site, _, _, _ in hooks.calls}
    assert sites == {LayerSite("temporal", "input", 0), LayerSite("spatial", "input", 1),
                     LayerSite("temporal", "input", 1), LayerSite("spatial", "middle", 0),
                     LayerSite("temporal", "middle", 0), LayerSite("spatial", "output", 2),
                     LayerSite("temporal", "output", 2), LayerSite("spatial", "output", 3),
                     LayerSite("temporal", "output", 3)}
    assert len(hooks.calls) == len(model.attn_processors)
    for site, _, tokens, shape in hooks.calls:   # spatial attends over pixels, temporal over the 3 frames
        assert tokens == (shape[2] * shape[3] if site.kind == "spatial" else 3)


class ComputeItself(UNetHooks):
    """Computes every attention from the layer's projections, with values from a doubled input."""
    wants_attention = True

    def attention(self, site, which, layer, hidden, context, run, feature_shape):
        keys = hidden if context is None else context
        return layer.project_out(plain_attention(layer.to_q(hidden), layer.to_k(keys), layer.to_v(keys * 2),
                                                 layer.heads))


class SeparateValues(UNetHooks):
    wants_attention = True

    def attention(self, site, which, layer, hidden, context, run, feature_shape):
        keys = hidden if context is None else context
        return run(hidden, context, keys * 2)


def test_separate_values_through_the_model_equal_a_hand_made_attention(model, inputs):
    by_hand = run(model, inputs, hooks=ComputeItself())
    assert (run(model, inputs, hooks=SeparateValues()) - by_hand).abs().max() < 1e-5
    assert (by_hand - run(model, inputs)).abs().max() > 1e-3


def comfy_options(**patches):
    options = {"cond_or_uncond": [1, 0], "sigmas": torch.tensor([1.0]), "patches": {}, "patches_replace": {}}
    for key, value in patches.items():
        (options["patches_replace"] if key.startswith("replace_") else options["patches"])[
            key.removeprefix("replace_")] = value
    return options


def test_global_attention_patches_reach_spatial_layers_only_with_comfyui_extra_options(model, inputs):
    seen = []

    def attn1(q, k, v, extra):
        seen.append((extra["block"], extra["block_index"], extra["n_heads"], extra["original_shape"],
                     extra["activations_shape"], extra["cond_or_uncond"]))
        return q, k, v
    options = protocol.call_options(comfy_options(attn1_patch=[attn1]), None, (6, 4, 8, 8))
    assert torch.equal(run(model, inputs, hooks=options.hooks), plain_run(model, inputs))
    assert {s[0] for s in seen} == {("input", 1), ("middle", 0), ("output", 2), ("output", 3)}
    assert all(s[1] == 0 and s[3] == [6, 4, 8, 8] and s[5] == [1, 0] for s in seen)
    assert all(s[2] * 8 == s[4][1] for s in seen)              # heads x head size = the transformer's width


def test_replacements_are_found_by_block_and_transformer_index_temporal_names_apart(model, inputs):
    called = []

    def replace(name):
        def attend(q, k, v, extra):
            called.append((name, extra["block"]))
            return plain_attention(q, k, v, extra["n_heads"])
        return attend
    replaced = {("output", 3, 0): replace("with index"), ("middle", 0): replace("without index"),
                ("temporal_output", 3): replace("temporal")}
    options = protocol.call_options(comfy_options(replace_attn1=replaced), None, (6, 4, 8, 8))
    out = run(model, inputs, hooks=options.hooks)
    assert sorted(called) == [("temporal", ("temporal_output", 3)), ("with index", ("output", 3)),
                              ("without index", ("middle", 0))]
    assert (out - run(model, inputs)).abs().max() < 1e-5      # the replacement is plain attention


def test_the_attention_override_wraps_every_attention_kernel(model, inputs):
    calls = []

    def override(kernel, q, k, v, heads, **kwargs):
        calls.append(kwargs["transformer_options"]["cond_or_uncond"])
        return kernel(q, k, v, heads) * 1.0
    options = protocol.call_options({"cond_or_uncond": [0], "optimized_attention_override": override},
                                    plain_attention, (6, 4, 8, 8))
    assert options.hooks is protocol.NO_HOOKS                 # nothing to hook: the override rides on the kernel
    out = run(model, inputs, attention_fn=options.attention_fn)
    assert len(calls) == len(model.attn_processors) and (out - run(model, inputs)).abs().max() < 1e-5
