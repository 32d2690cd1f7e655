"""Behaviour beyond diffusers: the text mask, per-frame context, injected operations, config errors and access."""
import types

import pytest
import torch
from parity_helpers import TINY, inputs, randomize_, rel_err, twins

import unet3d


def _model(**overrides):
    torch.manual_seed(0)
    return randomize_(unet3d.UNet3DConditionModel(**dict(TINY, **overrides))).eval()


def _run(model, *args, **kw):
    with torch.no_grad():
        return model(*args, **kw).sample


def test_all_ones_mask_is_bit_equal_to_no_mask():
    model = _model()
    sample, context = inputs(2, 3)
    base = _run(model, sample, 10, context)
    assert torch.equal(_run(model, sample, 10, context, attention_mask=torch.ones(2, 5)), base)
    assert torch.equal(_run(model, sample, 10, context, attention_mask=torch.ones(2, 5, dtype=torch.bool)), base)


def test_mask_equals_dropping_the_tokens():
    """Masking tokens must equal a context without them (an independent reference for 'really masks')."""
    model = _model()
    sample, context = inputs(1, 3)
    mask = torch.tensor([[1, 1, 0, 1, 0]])
    masked = _run(model, sample, 10, context, attention_mask=mask)
    dropped = _run(model, sample, 10, context[:, [0, 1, 3]])
    assert rel_err(masked, dropped) < 1e-5
    assert rel_err(masked, _run(model, sample, 10, context)) > 1e-4


def test_mask_rows_are_per_video():
    model = _model()
    sample, context = inputs(2, 3)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 1, 1]])
    both = _run(model, sample, 10, context, attention_mask=mask)
    first = _run(model, sample[:1], 10, context[:1])
    second = _run(model, sample[1:], 10, context[1:, [0, 3, 4]])
    assert rel_err(both[:1], first) < 1e-5 and rel_err(both[1:], second) < 1e-5


def test_mask_shape_error():
    model = _model()
    sample, context = inputs(2, 3)
    with pytest.raises(ValueError, match="attention_mask"):
        _run(model, sample, 10, context, attention_mask=torch.ones(2, 4))


def test_per_frame_context_with_equal_rows_equals_per_video():
    model = _model()
    sample, context = inputs(2, 3)
    per_frame = context.repeat_interleave(3, dim=0)
    assert torch.equal(_run(model, sample, 10, per_frame), _run(model, sample, 10, context))


def test_per_frame_context_matches_diffusers_fed_per_frame():
    """diffusers with its spatial transformers handed the per-frame context (pre-hooks) is the reference."""
    reference, ours = twins(**TINY)
    sample, _ = inputs(2, 3)
    per_frame = torch.randn(6, 5, 16, generator=torch.Generator().manual_seed(7))

    def swap(module, args, kwargs):
        kwargs["encoder_hidden_states"] = per_frame
        return args, kwargs

    for module in reference.modules():
        if type(module).__name__ == "Transformer2DModel":
            module.register_forward_pre_hook(swap, with_kwargs=True)
    dummy = torch.zeros(2, 5, 16)
    with torch.no_grad():
        expected = reference(sample, 10, dummy).sample
    assert rel_err(_run(ours, sample, 10, per_frame), expected) <= 1e-5


def test_bad_shapes_are_clear_errors():
    model = _model()
    sample, context = inputs(2, 3)
    with pytest.raises(ValueError, match="batch, channels, frames, height, width"):
        model(sample[0], 10, context)
    with pytest.raises(ValueError, match="in_channels=4"):
        model(sample.transpose(1, 2), 10, context)
    with pytest.raises(ValueError, match="one per video \\(2\\) or one per frame"):
        model(sample, 10, context[:1].repeat(4, 1, 1))
    with pytest.raises(ValueError, match="`timestep`"):
        model(sample, torch.tensor([1, 2, 3]), context)
    with pytest.raises(ValueError, match="encoder_hidden_states` is required"):
        model(sample, 10, None)
    with pytest.raises(ValueError, match="time_cond_proj_dim"):
        model(sample, 10, context, timestep_cond=torch.zeros(2, 4))


def test_every_parameter_lives_in_an_injected_operation_layer():
    made = []

    def recording(base):
        class Layer(base):
            def __init__(self, *a, **kw):
                made.append((base.__name__, kw.get("dtype"), kw.get("device")))
                super().__init__(*a, **kw)
        Layer.__name__ = base.__name__
        return Layer

    nn = torch.nn
    ops = types.SimpleNamespace(**{n: recording(getattr(nn, n))
                                   for n in ("Linear", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm")})
    model = unet3d.UNet3DConditionModel(**TINY, operations=ops, dtype=torch.float64, device="cpu")
    op_classes = tuple(vars(ops).values())
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        assert not own or isinstance(module, op_classes), f"{name} holds parameters outside an operations layer"
    assert made and all(dtype == torch.float64 and device == "cpu" for _, dtype, device in made)
    assert model.dtype == torch.float64
    assert {kind for kind, _, _ in made} == {"Linear", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm"}


def test_meta_build_and_assign_load():
    source = _model()
    meta = unet3d.UNet3DConditionModel(**TINY, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    meta.load_state_dict(source.state_dict(), strict=True, assign=True)
    sample, context = inputs(1, 2)
    assert torch.equal(_run(meta.eval(), sample, 10, context), _run(source, sample, 10, context))


def test_fp16_and_bf16_forward_run():
    model = _model()
    sample, context = inputs(1, 2)
    base = _run(model, sample, 10, context)
    for dtype in (torch.bfloat16,):
        low = _run(model.to(dtype), sample.to(dtype), 10, context.to(dtype))
        assert low.dtype == dtype and rel_err(low.float(), base) < 5e-2


def test_mask_with_sliced_attention_equals_unsliced():
    model = _model(attention_head_dim=4)
    sample, context = inputs(2, 3)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])
    base = _run(model, sample, 10, context, attention_mask=mask)
    for size in ("max", 3):
        options = {"attention_slice": size}
        assert rel_err(_run(model, sample, 10, context, attention_mask=mask, call_options=options), base) < 1e-6
