"""LoRA on the pure model: strength 0 / 1 / unload, and every supported key layout.

The reference for "merged" is independent of the merge code: forward hooks add ``scale * up(down(x))`` to each
adapted layer's output at run time (how a LoRA behaves before merging); weights are also checked against
``W + scale * up @ down`` written out here.
"""
import pytest
import torch
import torch.nn.functional as F
from helpers_checkpoint import diffusers_to_original
from parity_helpers import TINY, inputs, randomize_, rel_err

import unet3d
from unet3d.checkpoints.lora import LoraError, lora_delta, parse_for_model

RANK = 2


@pytest.fixture(scope="module")
def model():
    return randomize_(unet3d.UNet3DConditionModel(**TINY), seed=3).eval()


def _run(model):
    sample, context = inputs(batch=1, frames=2, height=8, width=8)
    with torch.no_grad():
        return model(sample, 10, context).sample


def _targets(model):
    """(module name, module) for every Linear / Conv2d / Conv3d: what Text-To-Video-Finetuning adapts."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def _factors(module, gen, std=0.05):
    """(up, down) as a LoRA trainer stores them: down has the layer's kernel, up is 1x1."""
    w = module.weight
    if w.ndim == 2:
        return (torch.randn(w.shape[0], RANK, generator=gen) * std, torch.randn(RANK, w.shape[1], generator=gen) * std)
    ones = (1,) * (w.ndim - 2)
    return (torch.randn(w.shape[0], RANK, *ones, generator=gen) * std,
            torch.randn(RANK, *w.shape[1:], generator=gen) * std)


def _truth(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {name: _factors(m, gen) for name, m in _targets(model)}


def _peft(truth, prefix="unet."):
    sd = {}
    for name, (up, down) in truth.items():
        sd[f"{prefix}{name}.lora_A.weight"] = down
        sd[f"{prefix}{name}.lora_B.weight"] = up
    return sd


def _kohya(truth, alpha):
    sd = {}
    for name, (up, down) in truth.items():
        key = "lora_unet_" + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
        sd[f"{key}.alpha"] = torch.tensor(float(alpha))
    sd["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(RANK, 4)
    return sd


def _hooked_reference(model, truth, scale):
    """Run the base model with each LoRA applied to activations (not merged)."""
    modules = dict(model.named_modules())
    handles = []
    for name, (up, down) in truth.items():
        m = modules[name]
        if isinstance(m, torch.nn.Linear):
            def extra(x, up=up, down=down, m=m):
                return F.linear(F.linear(x, down), up)
        elif isinstance(m, torch.nn.Conv2d):
            def extra(x, up=up, down=down, m=m):
                return F.conv2d(F.conv2d(x, down, None, m.stride, m.padding), up)
        else:
            def extra(x, up=up, down=down, m=m):
                return F.conv3d(F.conv3d(x, down, None, m.stride, m.padding), up)
        handles.append(m.register_forward_hook(lambda mod, args, out, extra=extra: out + scale * extra(args[0])))
    try:
        return _run(model)
    finally:
        for h in handles:
            h.remove()


def test_strength_zero_equals_no_lora(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = _run(model)
    try:
        changed = model.load_lora(_peft(_truth(model)), strength=0.0)
        assert changed, "the LoRA must still be parsed and matched at strength 0"
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert torch.equal(_run(model), base)
    finally:
        model.unload_lora()


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_strength_equals_weights_merged_by_hand(model, strength):
    truth = _truth(model, seed=1)
    alpha = 4.0  # scale alpha / rank = 2
    scale = strength * alpha / RANK
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = _hooked_reference(model, truth, scale)
    base = _run(model)
    try:
        model.load_lora(_kohya(truth, alpha), strength=strength)
        params = dict(model.named_parameters())
        for name, (up, down) in truth.items():
            w = before[f"{name}.weight"]
            by_hand = w + scale * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
            torch.testing.assert_close(params[f"{name}.weight"].detach(), by_hand, rtol=0, atol=1e-6)
        for key in before:  # biases and norms untouched
            if not any(key == f"{n}.weight" for n in truth):
                assert torch.equal(before[key], params[key].detach()), key
        merged = _run(model)
        assert rel_err(merged, reference) < 1e-5
        assert rel_err(merged, base) > 1e-3, "the LoRA must change the output"
    finally:
        model.unload_lora()


def test_unload_restores_bit_exactly(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = _run(model)
    model.load_lora(_peft(_truth(model, seed=4)), strength=0.8)
    model.load_lora(_kohya(_truth(model, seed=5), alpha=1.0), strength=-1.3)  # stacked, overlapping keys
    assert not torch.equal(_run(model), base)
    model.unload_lora()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(_run(model), base)
    model.unload_lora()  # a second unload is a no-op


def test_load_from_safetensors_file(model, tmp_path):
    from safetensors.torch import save_file
    truth = _truth(model, seed=6)
    path = tmp_path / "peft.safetensors"
    save_file(_peft(truth, prefix="base_model.model."), str(path))
    reference = _hooked_reference(model, truth, 1.0)
    try:
        model.load_lora(str(path))
        assert rel_err(_run(model), reference) < 1e-5
    finally:
        model.unload_lora()


# ---- every layout maps to the same weights --------------------------------------------------------------------

def _deltas(model, sd):
    parsed = parse_for_model(model, sd)
    params = dict(model.named_parameters())
    return {k: lora_delta(p, params[k].shape) for k, p in parsed.pairs.items()}, parsed


def _expected(model, truth, scale=1.0):
    params = dict(model.named_parameters())
    return {f"{n}.weight": scale * (up.flatten(1) @ down.flatten(1)).reshape(params[f"{n}.weight"].shape)
            for n, (up, down) in truth.items()}


def _assert_same(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.parametrize("layout", ["peft", "peft-bare", "kohya", "kohya-dotted"])
def test_standard_layouts_parse(model, layout):
    truth = _truth(model, seed=7)
    if layout == "peft":
        sd, scale = _peft(truth), 1.0
    elif layout == "peft-bare":
        sd, scale = _peft(truth, prefix=""), 1.0
    elif layout == "kohya":
        sd, scale = _kohya(truth, alpha=1.0), 0.5
    else:
        sd = {}
        for name, (up, down) in truth.items():
            sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = down, up
        scale = 1.0
    got, parsed = _deltas(model, sd)
    _assert_same(got, _expected(model, truth, scale))
    if layout == "kohya":
        assert parsed.skipped_text_keys, "text-encoder entries are skipped, not applied"


def test_attention_processor_layout_parses(model):
    truth = {n: f for n, f in _truth(model, seed=8).items() if n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0")
             and ".attn" in n}
    sd = {}
    for name, (up, down) in truth.items():
        attn, proj = name.split(".to_")
        proj = "to_" + proj.replace(".0", "")
        sd[f"unet.{attn}.processor.{proj}_lora.down.weight"] = down
        sd[f"unet.{attn}.processor.{proj}_lora.up.weight"] = up
    assert any(".to_out.0" in n for n in truth)
    got, _ = _deltas(model, sd)
    _assert_same(got, _expected(model, truth))


def _stable_lora(model, seed):
    """Text-To-Video-Finetuning stable_lora factors (loralib) and the deltas its layers apply, written out here:
    Linear B @ A; Conv2d (out*k, r*k) @ (r*k, in*k) viewed as the weight; Conv3d (k, 1, 1) viewed as
    (out, in, k, k, 1) and averaged over the 4th axis. Values are fp16-exact (the webui file is fp16)."""
    gen = torch.Generator().manual_seed(seed)
    truth, want = {}, {}
    for name, m in _targets(model):
        w = m.weight
        k = 1 if w.ndim == 2 else w.shape[2]
        a = (torch.randn(RANK * k, w.shape[1] * k, generator=gen) * 0.05).half().float()
        b = (torch.randn(w.shape[0] * k, RANK * k, generator=gen) * 0.05).half().float()
        if w.ndim == 5:
            want[f"{name}.weight"] = (b @ a).view(w.shape[0], w.shape[1], k, k, 1).mean(dim=-2, keepdim=True)
        else:
            want[f"{name}.weight"] = (b @ a).view(w.shape)
        truth[name] = (a, b)
    return truth, want


@pytest.mark.parametrize("names", ["diffusers", "modelscope"])
def test_text_to_video_finetuning_stable_lora_parses(model, names):
    truth, want = _stable_lora(model, seed=9)
    sd = {}
    for name, (a, b) in truth.items():
        if names == "modelscope":  # the file saved for the webui text2video extension
            (original,) = diffusers_to_original({f"{name}.weight": torch.zeros(1)}, TINY)
            name = original[:-len(".weight")]
        sd[f"{name}.lora_A"], sd[f"{name}.lora_B"] = a.half(), b.half()
    if names == "modelscope":
        assert any(k.startswith(("input_blocks.", "output_blocks.", "middle_block.")) for k in sd)
    got, parsed = _deltas(model, sd)
    _assert_same(got, want)
    assert parsed.layouts == ["stable_lora"]


# ---- errors ---------------------------------------------------------------------------------------------------

def _one_pair(model):
    name, (up, down) = next(iter(_truth(model).items()))
    return name, up, down


def test_unknown_layout_is_a_clear_error(model):
    with pytest.raises(LoraError, match=r"no LoRA layout.*foo\.bar.*Supported layouts"):
        parse_for_model(model, {"foo.bar": torch.zeros(2), "foo.baz": torch.zeros(2)})


def test_unsupported_variant_is_named(model):
    name, _, _ = _one_pair(model)
    with pytest.raises(LoraError, match="LoHa"):
        parse_for_model(model, {f"{name}.hada_w1_a": torch.zeros(2, 2)})


def test_lora_matching_no_weight_is_an_error_not_a_no_op(model):
    with pytest.raises(LoraError, match="matches no weight"):
        parse_for_model(model, {"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(2, 4),
                                "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.zeros(4, 2)})


def test_wrong_shapes_and_missing_factor(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = _peft(_truth(model), prefix="")
    name, up, down = _one_pair(model)
    good[f"{name}.lora_A.weight"] = down[:, :-1]  # one bad entry among good ones: nothing may change
    with pytest.raises(LoraError, match="cannot form the weight's shape"):
        model.load_lora(good)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(LoraError, match="no down factor"):
        parse_for_model(model, {f"{name}.lora_B.weight": up})
    assert "_lora_originals" not in model.__dict__ or not model.__dict__["_lora_originals"]


def test_cloneofsimo_unnamed_list_is_refused(model, tmp_path):
    path = tmp_path / "unet.pt"
    torch.save([torch.zeros(4, 2), torch.zeros(2, 4)], path)
    with pytest.raises(LoraError, match="unnamed tensors"):
        model.load_lora(str(path))
