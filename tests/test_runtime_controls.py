"""Attention slicing, feed-forward chunking, processors, fused projections, per-call options."""
import pytest
import torch
from parity_helpers import TINY, inputs, rel_err, twins

SLICE_TOL = 1e-6
CFG = dict(TINY, attention_head_dim=4)  # 8 and 16 heads: room for slice sizes


@pytest.fixture(scope="module")
def pair():
    reference, ours = twins(**CFG)
    sample, context = inputs(2, 4)
    with torch.no_grad():
        base = ours(sample, 10, context).sample
    return reference, ours, sample, context, base


def _run(model, sample, context, **kw):
    with torch.no_grad():
        return model(sample, 10, context, **kw).sample


@pytest.mark.parametrize("size", ["auto", "max", 2, 8, None])
def test_attention_slicing_changes_nothing(pair, size):
    _, ours, sample, context, base = pair
    ours.set_attention_slice(size)
    try:
        assert rel_err(_run(ours, sample, context), base) <= SLICE_TOL
    finally:
        ours.set_attention_slice(None)


def test_attention_slicing_list_form_and_diffusers_equality(pair):
    reference, ours, sample, context, base = pair
    n = len(ours.attn_processors)
    sizes = [1 + (i % 3) for i in range(n)]
    ours.set_attention_slice(sizes)
    reference.set_attention_slice(sizes)
    try:
        got = _run(ours, sample, context)
        assert rel_err(got, base) <= SLICE_TOL
        assert rel_err(got, _run(reference, sample, context)) <= 1e-5
        assert [p.slice_size for p in ours.attn_processors.values()] == sizes
    finally:
        ours.set_attention_slice(None)
        reference.set_attention_slice(None)


def test_slice_errors_name_the_value(pair):
    _, ours, *_ = pair
    with pytest.raises(ValueError, match="smaller or equal"):
        ours.set_attention_slice(9)  # the transformer_in / level-0 layers have 8 heads
    with pytest.raises(ValueError, match="match `len\\(slice_size\\)`"):
        ours.set_attention_slice([1, 2])
    with pytest.raises(ValueError, match="'auto', 'max' or a positive integer"):
        ours.set_attention_slice("half")
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in ours.attn_processors.values())  # nothing half-set


def test_auto_slicing_on_single_head_layers_works():
    """diffusers divides by zero here ('auto' gives slice 0 on a 1-head layer); we use 1."""
    _, ours = twins(**dict(TINY, attention_head_dim=32, block_out_channels=(32, 32)))
    sample, context = inputs(1, 2)
    base = _run(ours, sample, context)
    ours.set_attention_slice("auto")
    assert rel_err(_run(ours, sample, context), base) <= SLICE_TOL


@pytest.mark.parametrize("chunk,dim", [(None, 0), (2, 0), (1, 1), (4, 1)])
def test_forward_chunking_changes_nothing(pair, chunk, dim):
    _, ours, sample, context, base = pair
    ours.enable_forward_chunking(chunk, dim)
    try:
        assert rel_err(_run(ours, sample, context), base) <= SLICE_TOL
    finally:
        ours.disable_forward_chunking()
    assert torch.equal(_run(ours, sample, context), base)


def test_forward_chunking_errors(pair):
    _, ours, sample, context, _ = pair
    with pytest.raises(ValueError, match="dim"):
        ours.enable_forward_chunking(1, dim=2)
    ours.enable_forward_chunking(3, dim=1)  # 4 frames and 256 tokens are not divisible by 3
    try:
        with pytest.raises(ValueError, match="not divisible by chunk_size 3"):
            _run(ours, sample, context)
    finally:
        ours.disable_forward_chunking()


def test_per_call_options_equal_methods_and_leave_module_untouched(pair):
    reference, ours, sample, context, base = pair
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    processors = dict(ours.attn_processors)
    options = {"attention_slice": "max", "ff_chunk": (1, 1), "freeu": {"s1": 0.9, "s2": 0.2, "b1": 1.2, "b2": 1.4}}
    per_call = _run(ours, sample, context, call_options=options)
    reference.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    try:
        assert rel_err(per_call, _run(reference, sample, context)) <= 1e-5
    finally:
        reference.disable_freeu()
    assert dict(ours.attn_processors) == processors
    assert all(torch.equal(v, state[k]) for k, v in ours.state_dict().items())
    assert torch.equal(_run(ours, sample, context), base)  # nothing stuck


def test_per_call_none_overrides_model_defaults(pair):
    _, ours, sample, context, base = pair
    ours.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    try:
        off = _run(ours, sample, context, call_options={"freeu": None})
    finally:
        ours.disable_freeu()
    assert torch.equal(off, base)


def test_unknown_option_is_a_clear_error(pair):
    _, ours, sample, context, _ = pair
    with pytest.raises(ValueError, match="unknown keys \\['slicing'\\]"):
        _run(ours, sample, context, call_options={"slicing": "max"})


def test_attention_fn_is_used_per_call(pair):
    _, ours, sample, context, base = pair
    calls = []

    def spy(q, k, v, heads, mask=None):
        calls.append(heads)
        return torch.nn.functional.scaled_dot_product_attention(
            *(t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
        ).transpose(1, 2).reshape(q.shape)

    got = _run(ours, sample, context, call_options={"attention_fn": spy})
    assert len(calls) == len(ours.attn_processors)
    assert rel_err(got, base) <= SLICE_TOL


def test_fuse_unfuse_qkv(pair):
    _, ours, sample, context, base = pair
    keys = list(ours.state_dict())
    ours.fuse_qkv_projections()
    try:
        assert {type(p).__name__ for p in ours.attn_processors.values()} == {"FusedAttnProcessor2_0"}
        assert any(k.endswith("to_qkv.weight") for k in ours.state_dict())
        assert rel_err(_run(ours, sample, context), base) <= 1e-5
        with pytest.raises(ValueError, match="unfuse_qkv_projections"):
            ours.set_default_attn_processor()
    finally:
        ours.unfuse_qkv_projections()
    assert list(ours.state_dict()) == keys
    assert torch.equal(_run(ours, sample, context), base)
    ours.unfuse_qkv_projections()  # a second unfuse is harmless


def test_processor_api(pair):
    from diffusers.models.attention_processor import AttnProcessor as DiffusersClassic
    from diffusers.models.attention_processor import AttnProcessor2_0 as DiffusersProcessor

    reference, ours, sample, context, base = pair
    with pytest.raises(ValueError, match="does not match the number of attention layers"):
        ours.set_attn_processor({"x.processor": None})
    ours.set_default_attn_processor()
    try:
        assert {type(p).__name__ for p in ours.attn_processors.values()} == {"AttnProcessor"}
        assert rel_err(_run(ours, sample, context), base) <= 1e-5
        # a diffusers processor instance plugged into our layers works too (same module attribute names)
        ours.set_attn_processor({k: DiffusersProcessor() for k in ours.attn_processors})
        assert rel_err(_run(ours, sample, context), base) <= 1e-5
        ours.set_attn_processor(DiffusersClassic())
        assert rel_err(_run(ours, sample, context), base) <= 1e-5
    finally:
        from unet3d.network.attention import AttnProcessor2_0

        ours.set_attn_processor(AttnProcessor2_0())
    assert torch.equal(_run(ours, sample, context), base)


def test_gradient_checkpointing_gives_same_gradients():
    _, ours = twins(**TINY)
    ours.train()
    for m in ours.modules():  # dropout off so both passes see the same function
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    sample, context = inputs(1, 2)

    def grads():
        ours.zero_grad()
        ours(sample, 10, context).sample.square().mean().backward()
        return [p.grad.clone() for p in ours.parameters()]

    plain = grads()
    ours.enable_gradient_checkpointing()
    checkpointed = grads()
    ours.disable_gradient_checkpointing()
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(checkpointed, plain) if b.abs().max() > 0)


def test_unload_lora_is_a_noop_without_lora(pair):
    _, ours, sample, context, base = pair
    ours.unload_lora()
    assert torch.equal(_run(ours, sample, context), base)
