"""Our UNet3DConditionModel against diffusers' on identical random weights (fp32, relative max error <= 1e-5)."""
import pytest
import torch
from parity_helpers import TINY, inputs, rel_err, twins

TOL = 1e-5

CONFIGS = {
    "tiny": TINY,
    # diffusers' own unit-test config
    "diffusers-unit": dict(block_out_channels=(4, 8), norm_num_groups=4, layers_per_block=1, cross_attention_dim=8,
                           attention_head_dim=2, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                           up_block_types=("UpBlock3D", "CrossAttnUpBlock3D")),
    # three levels, two layers each, several heads, other activation/padding/eps/scale
    "three-levels": dict(block_out_channels=(16, 32, 32), norm_num_groups=4, layers_per_block=2,
                         cross_attention_dim=12, attention_head_dim=4, act_fn="gelu", downsample_padding=0,
                         mid_block_scale_factor=2, norm_eps=1e-6, in_channels=3, out_channels=5,
                         down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                         up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")),
    # head size that does not divide the width (inner width smaller than the channels)
    "uneven-heads": dict(block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1, cross_attention_dim=6,
                         attention_head_dim=3, down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D"),
                         up_block_types=("CrossAttnUpBlock3D", "CrossAttnUpBlock3D")),
    # attention only in the middle; time-conditioning projection
    "plain-blocks": dict(block_out_channels=(8, 16), norm_num_groups=2, layers_per_block=1, cross_attention_dim=8,
                         attention_head_dim=4, time_cond_proj_dim=6, down_block_types=("DownBlock3D", "DownBlock3D"),
                         up_block_types=("UpBlock3D", "UpBlock3D")),
}


def _context_dim(cfg):
    return cfg["cross_attention_dim"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 1, 16, 16), (2, 4, 15, 17)], ids=["b2f3", "one-frame", "odd"])
def test_forward_matches_diffusers(name, shape):
    cfg = CONFIGS[name]
    reference, ours = twins(seed=sum(map(ord, name)), **cfg)
    b, f, h, w = shape
    sample, context = inputs(b, f, h, w, channels=cfg.get("in_channels", 4), dim=_context_dim(cfg))
    kwargs = {}
    if cfg.get("time_cond_proj_dim"):
        kwargs["timestep_cond"] = torch.randn(b, cfg["time_cond_proj_dim"])
    with torch.no_grad():
        expected = reference(sample, 321, context, **kwargs).sample
        got = ours(sample, 321, context, **kwargs).sample
    assert got.shape == expected.shape == (b, cfg.get("out_channels", 4), f, h, w)
    assert rel_err(got, expected) <= TOL


@pytest.mark.parametrize("timestep", [7, 7.5, torch.tensor(999), torch.tensor([3]), torch.tensor([5, 900])],
                         ids=["int", "float", "0d", "1-elem", "per-video"])
def test_timestep_forms_match_diffusers(timestep):
    reference, ours = twins(**TINY)
    sample, context = inputs(2, 3)
    with torch.no_grad():
        assert rel_err(ours(sample, timestep, context).sample, reference(sample, timestep, context).sample) <= TOL


def test_per_video_timesteps_are_really_per_video():
    _, ours = twins(**TINY)
    sample, context = inputs(2, 3)
    with torch.no_grad():
        mixed = ours(sample, torch.tensor([5, 900]), context).sample
        first = ours(sample, 5, context).sample
        second = ours(sample, 900, context).sample
    assert torch.equal(mixed[0], first[0]) or rel_err(mixed[0], first[0]) < 1e-6
    assert rel_err(mixed[1], second[1]) < 1e-6
    assert rel_err(mixed[1], first[1]) > 1e-3


def test_freeu_matches_diffusers():
    cfg = CONFIGS["three-levels"]
    reference, ours = twins(**cfg)
    sample, context = inputs(2, 3, 16, 16, channels=3, dim=12)
    reference.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    ours.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    with torch.no_grad():
        expected = reference(sample, 10, context).sample
        got = ours(sample, 10, context).sample
        ours.disable_freeu()
        plain = ours(sample, 10, context).sample
    assert rel_err(got, expected) <= TOL
    assert rel_err(plain, expected) > 1e-3  # FreeU really changed something


def test_additional_residuals_match_diffusers():
    reference, ours = twins(**TINY)
    sample, context = inputs(2, 3)
    skips = []
    reference.down_blocks[0].register_forward_hook(lambda m, i, o: skips.extend(o[1]))
    with torch.no_grad():
        reference(sample, 10, context)
    gen = torch.Generator().manual_seed(3)
    n = sample.shape[0] * sample.shape[2]
    residuals = [torch.randn(n, 32, 16, 16, generator=gen)]  # transformer_in output
    residuals += [torch.randn(s.shape, generator=gen) for s in skips]
    residuals += [torch.randn(n, 64, 8, 8, generator=gen)]  # down block 1 (no downsampler): one layer
    mid = torch.randn(n, 64, 8, 8, generator=gen)
    with torch.no_grad():
        expected = reference(sample, 10, context, down_block_additional_residuals=residuals,
                             mid_block_additional_residual=mid).sample
        got = ours(sample, 10, context, down_block_additional_residuals=residuals,
                   mid_block_additional_residual=mid).sample
    assert rel_err(got, expected) <= TOL


def test_wrong_residual_count_is_a_clear_error():
    _, ours = twins(**TINY)
    sample, context = inputs(2, 3)
    with pytest.raises(ValueError, match="down_block_additional_residuals.*skip features"):
        ours(sample, 10, context, down_block_additional_residuals=[torch.zeros(6, 32, 16, 16)])


def test_return_dict_and_tuple_and_class_labels():
    reference, ours = twins(**TINY)
    sample, context = inputs(2, 3)
    with torch.no_grad():
        out = ours(sample, 10, context)
        tup = ours(sample, 10, context, return_dict=False, class_labels=torch.tensor([1, 2]))
    assert isinstance(tup, tuple) and torch.equal(tup[0], out.sample) and torch.equal(out[0], out["sample"])


def test_state_dict_names_and_processor_keys_equal_diffusers():
    from diffusers import UNet3DConditionModel as Reference

    import unet3d

    reference = Reference(**CONFIGS["three-levels"])
    ours = unet3d.UNet3DConditionModel(**CONFIGS["three-levels"])
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert list(ours.attn_processors) == list(reference.attn_processors)


def test_default_config_matches_diffusers_on_meta():
    """The real 1.4 B-parameter architecture: same names and shapes (built on meta, no memory)."""
    from diffusers import UNet3DConditionModel as Reference

    import unet3d

    with torch.device("meta"):
        reference = Reference()
    ours = unet3d.UNet3DConditionModel(device="meta")
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 1_411_233_860
