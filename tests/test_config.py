"""Config access, documented-but-broken-in-diffusers options, and validation errors that name the values."""
import pytest
import torch
from parity_helpers import TINY, inputs, rel_err, twins

import unet3d


def test_config_attribute_and_mapping_access():
    model = unet3d.UNet3DConditionModel(**TINY)
    assert model.config.block_out_channels == (32, 64) == model.config["block_out_channels"]
    assert model.config.sample_size is None and model.config["time_cond_proj_dim"] is None
    assert list(model.config) == list(unet3d.network.config.DEFAULTS)
    with pytest.raises(AttributeError, match="no field 'nope'"):
        model.config.nope
    with pytest.raises(AttributeError, match="read-only"):
        model.config.in_channels = 3


def test_from_dict_ignores_diffusers_bookkeeping_keys():
    cfg, ignored = unet3d.UNet3DConfig.from_dict(
        {"_class_name": "UNet3DConditionModel", "_diffusers_version": "0.15.0.dev0", "flip_sin_to_cos": True,
         "block_out_channels": [32, 64], **{k: v for k, v in TINY.items() if k != "block_out_channels"}})
    assert ignored == ["_class_name", "_diffusers_version", "flip_sin_to_cos"]
    assert unet3d.UNet3DConditionModel(**cfg).config == cfg
    from diffusers import UNet3DConditionModel as Reference

    reference_config = dict(Reference(**TINY).config)
    assert unet3d.UNet3DConditionModel.from_config(reference_config).config == cfg


def _heads(model):
    return {name: m.heads for name, m in model.named_modules() if type(m).__name__ == "Attention"}


def test_num_attention_heads_is_the_real_head_count_and_matches_equivalent_head_dim():
    """num_attention_heads=(4, 8) on widths (32, 64) is head size 8 everywhere: diffusers' attention_head_dim=8."""
    reference, _ = twins(**TINY)
    ours = unet3d.UNet3DConditionModel(**dict(TINY, attention_head_dim=64, num_attention_heads=(4, 8))).eval()
    ours.load_state_dict(reference.state_dict())
    sample, context = inputs(2, 3)
    with torch.no_grad():
        assert rel_err(ours(sample, 10, context).sample, reference(sample, 10, context).sample) <= 1e-5
    single = unet3d.UNet3DConditionModel(**dict(TINY, num_attention_heads=2))
    heads = _heads(single)
    assert heads["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] == 2
    assert heads["mid_block.attentions.0.transformer_blocks.0.attn2"] == 2
    assert single.down_blocks[1].has_cross_attention is False


def test_per_level_head_dims():
    model = unet3d.UNet3DConditionModel(**dict(TINY, down_block_types=("CrossAttnDownBlock3D",) * 2,
                                               up_block_types=("CrossAttnUpBlock3D",) * 2,
                                               attention_head_dim=(8, 16)))
    heads = _heads(model)
    assert heads["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] == 4  # 32 / 8
    assert heads["down_blocks.1.attentions.0.transformer_blocks.0.attn1"] == 4  # 64 / 16
    assert heads["up_blocks.0.attentions.0.transformer_blocks.0.attn1"] == 4  # reversed: level 1
    assert heads["up_blocks.1.attentions.0.transformer_blocks.0.attn1"] == 4  # level 0
    assert model.transformer_in.proj_in.out_features == 8 * 8  # 8 heads of the level-0 head size
    sample, context = inputs(1, 2)
    model(sample, 1, context)


def test_norm_num_groups_none_skips_output_norm():
    model = unet3d.UNet3DConditionModel(**dict(TINY, norm_num_groups=None))
    assert model.conv_norm_out is None and model.conv_act is None
    assert not any(k.startswith("conv_norm_out") for k in model.state_dict())
    assert model.down_blocks[0].resnets[0].norm1.num_groups == 32
    sample, context = inputs(1, 2)
    assert model(sample, 1, context).sample.shape == sample.shape


@pytest.mark.parametrize("overrides,param", [
    ({"up_block_types": ("UpBlock3D",)}, "up_block_types"),
    ({"block_out_channels": (32, 64, 64)}, "down_block_types"),
    ({"down_block_types": ("CrossAttnDownBlock3D", "Nope3D")}, "down_block_types"),
    ({"up_block_types": ("UpBlock3D", "CrossAttnUpBlock2D")}, "up_block_types"),
    ({"attention_head_dim": (8, 8, 8)}, "attention_head_dim"),
    ({"num_attention_heads": (3, 8)}, "num_attention_heads"),
    ({"norm_num_groups": 12}, "norm_num_groups"),
    ({"act_fn": "tanh"}, "act_fn"),
    ({"cross_attention_dim": None}, "cross_attention_dim"),
    ({"layers_per_block": 0}, "layers_per_block"),
    ({"attention_head_dim": 128}, "attention_head_dim"),
    ({"downsample_padding": -1}, "downsample_padding"),
    ({"time_cond_proj_dim": 0}, "time_cond_proj_dim"),
])
def test_invalid_configs_name_the_parameter(overrides, param):
    with pytest.raises(ValueError, match=f"`{param}`"):
        unet3d.UNet3DConditionModel(**dict(TINY, **overrides))


def test_unknown_constructor_keyword_is_a_type_error():
    with pytest.raises(TypeError):
        unet3d.UNet3DConditionModel(**TINY, num_layers=3)
