"""diffusers' ModelMixin / ConfigMixin / BaseOutput surface, checked against diffusers itself on the same weights:
the output object, the config, config reads through the model, sizes, train/eval and gradient checkpointing, and
cross_attention_kwargs."""
import copy
import json
import logging
import pickle

import pytest
import torch
from parity_helpers import TINY, inputs, rel_err, twins

import unet3d
from unet3d.errors import ReadOnlyError

# Eager CPU inference computes transformer_in on its narrow side (unet3d/network/narrow_side.py): the numbers are
# diffusers' to float rounding, not bit for bit.
PARITY = 1e-5


@pytest.fixture(scope="module")
def pair():
    reference, ours = twins(**TINY)
    sample, context = inputs(2, 3)
    return reference, ours, sample, context


def _forward(model, sample, context, **kw):
    with torch.no_grad():
        return model(sample, 10, context, **kw)


# ------------------------------------------------------------------------------------------------- output object
def test_output_reads_like_diffusers_output(pair):
    reference, ours, sample, context = pair
    theirs, mine = _forward(reference, sample, context), _forward(ours, sample, context)
    assert rel_err(mine.sample, theirs.sample) <= PARITY
    for out in (theirs, mine):  # every access pattern: the same answers from both
        assert isinstance(out, dict) and list(out.keys()) == ["sample"] and "sample" in out
        assert out[0] is out["sample"] is out.sample and out.to_tuple() == (out.sample,)
        assert len(out[:1]) == 1 and out[:1][0] is out.sample and out[1:] == ()
        assert list(dict(**out)) == ["sample"] and len(out) == 1 and list(out.values())[0] is out.sample
        with pytest.raises(IndexError):
            out[1]
        with pytest.raises(KeyError):
            out["nope"]
        for refused in (lambda o: o.pop("sample"), lambda o: o.update(sample=None), lambda o: o.setdefault("x", 1),
                        lambda o: o.__delitem__("sample")):
            with pytest.raises(Exception):
                refused(out)
    with pytest.raises(ReadOnlyError):
        mine.pop("sample")
    assert isinstance(_forward(ours, sample, context, return_dict=False), tuple)


def test_output_fields_stay_in_step_and_survive_pickling(pair):
    reference, ours, sample, context = pair
    for out in (_forward(reference, sample, context), _forward(ours, sample, context)):
        replacement = torch.zeros(1)
        out.sample = replacement
        assert out["sample"] is replacement
        out["sample"] = replacement + 1
        assert torch.equal(out.sample, replacement + 1)
        again = pickle.loads(pickle.dumps(out))
        assert type(again) is type(out) and torch.equal(again.sample, out.sample) and list(again) == ["sample"]
        assert torch.equal(copy.deepcopy(out)[0], out[0])
    leaves, spec = torch.utils._pytree.tree_flatten(out)  # a pytree node, as diffusers registers its outputs
    assert len(leaves) == 1 and type(torch.utils._pytree.tree_unflatten(leaves, spec)) is type(out)


# ------------------------------------------------------------------------------------------------- config
def test_config_fields_equal_diffusers_and_config_is_frozen(pair):
    reference, ours, _, _ = pair
    fields = list(unet3d.network.config.DEFAULTS)
    theirs = {k: tuple(v) if isinstance(v, list) else v for k, v in reference.config.items() if k in fields}
    assert dict(ours.config) == theirs
    assert all(getattr(ours.config, k) == ours.config[k] for k in fields)
    for refused in (lambda c: c.pop("in_channels"), lambda c: c.update(in_channels=3),
                    lambda c: c.setdefault("x", 1), lambda c: c.__delitem__("in_channels")):
        with pytest.raises(Exception):  # diffusers' FrozenDict refuses these four too
            refused(reference.config)
        with pytest.raises(ReadOnlyError):
            refused(ours.config)
    with pytest.raises(ReadOnlyError):
        ours.config["in_channels"] = 3
    with pytest.raises(AttributeError, match="read-only"):
        ours.config.in_channels = 3
    assert copy.deepcopy(ours.config) == ours.config == pickle.loads(pickle.dumps(ours.config))


def test_config_fields_read_through_the_model_warn_as_in_diffusers():
    reference, ours = twins(**TINY)
    for model in (reference, ours):
        with pytest.warns(FutureWarning):
            assert model.in_channels == 4 and model.config.in_channels == 4
        with pytest.warns(FutureWarning):
            assert getattr(model, "block_out_channels")[1] == 64
        model.register_to_config(test_attribute=5)
        assert model.config.test_attribute == 5
        with pytest.warns(FutureWarning):
            assert model.test_attribute == 5
        model.dummy_attribute = 7
        assert model.dummy_attribute == 7 and hasattr(model, "save_pretrained")
    with pytest.raises(AttributeError) as theirs:
        reference.does_not_exist
    with pytest.raises(AttributeError) as mine:
        ours.does_not_exist
    assert str(mine.value) == str(theirs.value)


def test_register_to_config_reaches_config_json_and_from_config(tmp_path):
    reference, ours = twins(**TINY)
    for model, folder in ((reference, tmp_path / "theirs"), (ours, tmp_path / "ours")):
        model.register_to_config(sample_size=24, test_attribute="kept")
        model.save_config(folder)

    theirs = json.loads((tmp_path / "theirs" / "config.json").read_text())
    mine = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert mine["sample_size"] == theirs["sample_size"] == 24 and mine["test_attribute"] == theirs["test_attribute"]
    assert unet3d.UNet3DConditionModel.load_config(tmp_path / "ours") == mine
    rebuilt, unused = unet3d.UNet3DConditionModel.from_config(reference.config, return_unused_kwargs=True,
                                                              norm_eps=1e-3, not_a_field=1)
    _, their_unused = type(reference).from_config(reference.config, return_unused_kwargs=True, norm_eps=1e-3,
                                                  not_a_field=1)
    assert rebuilt.config.norm_eps == 1e-3 and rebuilt.config.sample_size == 24
    assert unused == {"not_a_field": 1} and their_unused["not_a_field"] == 1
    with pytest.raises(unet3d.ConfigError, match="norm_num_groups"):
        ours.register_to_config(norm_num_groups=7)  # fields stay valid: 7 does not divide the widths


# ------------------------------------------------------------------------------------------------- sizes, dtype
def test_sizes_dtype_device_and_class_attributes_equal_diffusers():
    reference, ours = twins(**TINY)
    for model in (reference, ours):
        for p in model.conv_in.parameters():
            p.requires_grad_(False)
    for only_trainable in (False, True):
        for exclude_embeddings in (False, True):
            assert ours.num_parameters(only_trainable, exclude_embeddings) == \
                reference.num_parameters(only_trainable, exclude_embeddings)
    assert ours.num_parameters(True) < ours.num_parameters()
    assert ours.get_memory_footprint() == reference.get_memory_footprint()
    assert (ours.dtype, ours.device) == (reference.dtype, reference.device) == (torch.float32, torch.device("cpu"))
    assert ours.to(torch.bfloat16).dtype == reference.to(torch.bfloat16).dtype == torch.bfloat16
    assert type(ours)._keep_in_fp32_modules is type(reference)._keep_in_fp32_modules is None
    assert type(ours)._no_split_modules is type(reference)._no_split_modules is None
    assert type(ours).config_name == type(reference).config_name == "config.json"


# ------------------------------------------------------------------------------------------------- training
def test_train_mode_dropout_equals_diffusers_and_eval_turns_it_off():
    reference, ours = twins(**TINY)
    sample, context = inputs(2, 3)
    assert ours.train() is ours and ours.training and all(m.training for m in ours.modules())
    reference.train()
    outs = []
    for model in (reference, ours):
        torch.manual_seed(5)  # same seed: the temporal convolutions' dropout draws the same masks in both
        with torch.no_grad():
            outs.append(model(sample, 10, context).sample)
    assert torch.equal(outs[0], outs[1])
    ours.eval()
    evaluated = _forward(ours, sample, context).sample
    assert not torch.equal(evaluated, outs[1])  # dropout (p=0.1) really acted in train mode
    assert torch.equal(_forward(ours, sample, context).sample, evaluated)


def test_gradient_checkpointing_flags_and_gradients_equal_diffusers():
    reference, ours = twins(**TINY)
    sample, context = inputs(1, 2)
    reference.train()
    ours.train()
    assert not ours.is_gradient_checkpointing
    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        reference.enable_gradient_checkpointing()  # diffusers refuses for this class; unet3d supports it

    def grads(model):
        model.zero_grad()
        torch.manual_seed(3)  # dropout active: checkpointing must replay the same masks
        model(sample, 10, context).sample.square().mean().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    theirs, plain = grads(reference), grads(ours)
    calls = []

    def counting_checkpoint(block, *args):
        calls.append(type(block).__name__)
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)

    ours.enable_gradient_checkpointing()
    assert ours.is_gradient_checkpointing
    checkpointed = grads(ours)
    ours.enable_gradient_checkpointing(counting_checkpoint)
    custom = grads(ours)
    ours.disable_gradient_checkpointing()
    assert not ours.is_gradient_checkpointing
    for name in theirs:
        assert torch.equal(plain[name], theirs[name]), name
        assert torch.equal(checkpointed[name], plain[name]) and torch.equal(custom[name], plain[name]), name
    assert calls.count("DownBlock3D") == 2 and calls.count("UpBlock3D") == 2 and "MidBlock3DCrossAttn" in calls
    calls.clear()
    ours.enable_gradient_checkpointing(counting_checkpoint)
    _forward(ours, sample, context)  # no gradients recorded: nothing to checkpoint
    assert calls == []


# --------------------------------------------------------------------------------------- cross_attention_kwargs
def test_lora_scale_in_cross_attention_kwargs_is_warned_and_ignored_as_in_diffusers(pair, caplog):
    reference, ours, sample, context = pair
    base = _forward(ours, sample, context).sample
    theirs = _forward(reference, sample, context, cross_attention_kwargs={"scale": 0.5}).sample
    with caplog.at_level(logging.WARNING, logger="unet3d"):
        mine = _forward(ours, sample, context, cross_attention_kwargs={"scale": 0.5}).sample
    assert torch.equal(mine, base) and rel_err(mine, theirs) <= PARITY
    warned = [r.getMessage() for r in caplog.records if r.name == "unet3d"]
    assert len(warned) == 1 and "['scale']" in warned[0] and "AttnProcessor2_0" in warned[0]
    caplog.clear()
    ours.set_attention_slice(2)
    try:
        with caplog.at_level(logging.WARNING, logger="unet3d"):
            sliced = _forward(ours, sample, context, cross_attention_kwargs={"scale": 0.5, "ip_adapter_masks": None},
                              call_options={"attention_slice": "max"}).sample
    finally:
        ours.set_attention_slice(None)
    assert (sliced - base).abs().max() <= 1e-5 * base.abs().max()
    warned = [r.getMessage() for r in caplog.records if r.name == "unet3d"]
    assert len(warned) == 1 and "SlicedAttnProcessor" in warned[0] and "ip_adapter_masks" not in warned[0]


def test_processor_gets_the_cross_attention_kwargs_it_names(pair):
    """A diffusers-style processor with its own keyword: it receives that key, and only that, in both models."""
    from diffusers.models.attention_processor import AttnProcessor2_0 as DiffusersProcessor

    reference, ours, sample, context = pair
    seen = set()

    class Scaled:
        def __init__(self):
            self.inner = DiffusersProcessor()

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                     out_scale=1.0):
            seen.add(out_scale)
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask) * out_scale

    kwargs = {"out_scale": 0.5, "scale": 0.3}
    outs = []
    for model in (reference, ours):
        before = model.attn_processors
        model.set_attn_processor(Scaled())
        try:
            outs.append(_forward(model, sample, context, cross_attention_kwargs=kwargs).sample)
            outs.append(_forward(model, sample, context).sample)
        finally:
            model.set_attn_processor(before)
    assert seen == {0.5, 1.0}
    assert (outs[2] - outs[0]).abs().max() <= 1e-5 * outs[0].abs().max()
    assert (outs[3] - outs[1]).abs().max() <= 1e-5 * outs[1].abs().max()
    assert (outs[2] - outs[3]).abs().max() > 1e-3  # the key was really used
