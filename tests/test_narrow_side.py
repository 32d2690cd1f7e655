"""``transformer_in`` computed on its narrow side (``unet3d/network/narrow_side.py``): q, k, v and the feed-forward's
last layer folded onto the input width. Reference: diffusers' TransformerTemporalModel and UNet3DConditionModel on
the same weights (every weight random, the LayerNorm affines too, so each folded term is exercised); where the fold
must not run, the same model with the fold turned off."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from parity_helpers import TINY, inputs, randomize_, rel_err, twins

import unet3d
from unet3d.network import narrow_side, tiling
from unet3d.network.attention import AttnProcessor
from unet3d.network.hooks import UNetHooks
from unet3d.network.ops import torch_ops
from unet3d.network.options import parse_call_options
from unet3d.network.transformer import TransformerTemporalModel

TOL = 1e-5
FRAMES = 8


class FoldLog(list):
    """The rows of each tile the fold computed; ``qkv``: whether that tile's q, k, v were folded too."""

    def __init__(self):
        super().__init__()
        self.qkv = []


@pytest.fixture
def folds(monkeypatch):
    log = FoldLog()
    project = narrow_side.NarrowSide.project

    def counted(self, z):
        log.append(z.shape[0])
        log.qkv.append(self.fold_qkv)
        return project(self, z)
    monkeypatch.setattr(narrow_side.NarrowSide, "project", counted)
    return log


def no_fold(monkeypatch):
    monkeypatch.setattr(narrow_side.NarrowSide, "for_call", classmethod(lambda cls, *args: None))


def temporal_pair(width=64, head_dim=64, groups=32, heads=8):
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel as Reference
    torch.manual_seed(0)
    reference = randomize_(Reference(num_attention_heads=heads, attention_head_dim=head_dim, in_channels=width,
                                     norm_num_groups=groups), seed=3, std=0.08).eval()
    ours = TransformerTemporalModel(heads, head_dim, width, groups, operations=torch_ops).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2 * FRAMES, width, 6, 5, generator=torch.Generator().manual_seed(1))
    return reference, ours, x


@pytest.mark.parametrize("tile_bytes", [None, 1 << 18])
@pytest.mark.parametrize("width, head_dim, groups, folds_qkv", [(64, 64, 32, True), (48, 8, 16, False)])
def test_widening_temporal_transformer_matches_diffusers(folds, monkeypatch, tile_bytes, width, head_dim, groups,
                                                         folds_qkv):
    """64 -> 512 folds both products; 48 -> 64 only the feed-forward's (q, k, v would be 49 deep against 64)."""
    reference, ours, x = temporal_pair(width, head_dim, groups)
    if tile_bytes:
        monkeypatch.setattr(tiling, "TILE_BYTES", tile_bytes)
    with torch.no_grad():
        expected = reference(x, num_frames=FRAMES).sample
        got = ours(x, FRAMES)
    assert rel_err(got, expected) <= TOL
    assert sum(folds) == 2 * 6 * 5 and (len(folds) == 1) == (tile_bytes is None)
    assert set(folds.qkv) == {folds_qkv}


@pytest.mark.parametrize("head_dim, folds_qkv", [(8, False), (16, True)])
def test_whole_model_matches_diffusers_and_only_transformer_in_folds(folds, head_dim, folds_qkv):
    """transformer_in is 8 heads of the head size: 32 -> 64 wide folds the feed-forward, 32 -> 128 both."""
    config = {**TINY, "attention_head_dim": head_dim}
    reference, ours = twins(seed=4, **config)
    sample, context = inputs(2, 3, 16, 16, dim=TINY["cross_attention_dim"])
    with torch.no_grad():
        expected = reference(sample, 321, context).sample
        got = ours(sample, 321, context).sample
    assert rel_err(got, expected) <= TOL
    assert folds == [2 * 16 * 16] and folds.qkv == [folds_qkv]   # the other transformers do not widen


def test_weights_are_read_at_each_call(folds):
    """A LoRA patched into the weights after a call is seen by the next one."""
    reference, ours, x = temporal_pair()
    with torch.no_grad():
        ours(x, FRAMES)
        for model in (reference, ours):
            block = model.transformer_blocks[0]
            for layer in (block.attn1.to_k, block.ff.net[2], model.proj_in, block.norm1):
                layer.weight.mul_(1.5)
        assert rel_err(ours(x, FRAMES), reference(x, num_frames=FRAMES).sample) <= TOL
    assert len(folds) == 2


@pytest.mark.parametrize("options", [{"attention_slice": "max"}, {"attention_slice": 3}, {"ff_chunk": (1, 1)},
                                     {"ff_chunk": (2, 0)}, {"attention_slice": "auto", "ff_chunk": (4, 1)}])
def test_composes_with_slicing_and_chunking(folds, options):
    reference, ours, x = temporal_pair()
    with torch.no_grad():
        plain = ours(x, FRAMES)
        got = ours(x, FRAMES, call_options=parse_call_options(options))
    assert len(folds) == 2
    assert rel_err(got, plain) <= 1e-6
    assert rel_err(got, reference(x, num_frames=FRAMES).sample) <= TOL


class Halving(nn.Linear):
    """A host's layer that computes with something other than its stored weight."""

    def forward(self, x):
        return nn.functional.linear(x, self.weight * 0.5, self.bias)


class AttentionHooks(UNetHooks):
    wants_attention = True


def off_cases():
    """name -> set-up of a call the fold must leave to the plain path (returns the forward's extra arguments)."""
    def hooked(model):
        model.transformer_in.transformer_blocks[0].attn1.to_q.register_forward_hook(lambda *a: None)
        return {}

    def foreign(model):
        model.transformer_in.transformer_blocks[0].attn1.set_processor(AttnProcessor())
        return {}

    def attention_hooks(model):
        return {"call_options": {"hooks": AttentionHooks()}}

    def training(model):
        model.train()
        for m in model.modules():    # no dropout draws: train mode alone must turn the fold off
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        return {}

    return {"forward hook on to_q": hooked, "bmm processor": foreign, "hooks that see attention": attention_hooks,
            "train mode": training}


@pytest.mark.parametrize("case", list(off_cases()))
def test_the_plain_path_runs_where_the_fold_would_bypass_something(folds, monkeypatch, case):
    torch.manual_seed(0)
    model = randomize_(unet3d.UNet3DConditionModel(**TINY), seed=2).eval()
    sample, context = inputs(1, 3, 16, 16, dim=TINY["cross_attention_dim"])
    kwargs = off_cases()[case](model)
    with torch.no_grad():
        got = model(sample, 321, context, **kwargs).sample
        assert folds == []
        no_fold(monkeypatch)
        assert torch.equal(got, model(sample, 321, context, **kwargs).sample)


def test_a_host_layer_and_autograd_get_the_plain_path(folds, monkeypatch):
    ops = SimpleNamespace(**{**vars(torch_ops), "Linear": Halving})
    torch.manual_seed(0)
    model = randomize_(unet3d.UNet3DConditionModel(**TINY, operations=ops), seed=2).eval()
    sample, context = inputs(1, 3, 16, 16, dim=TINY["cross_attention_dim"])
    with torch.no_grad():
        hosted = model(sample, 321, context).sample
    with_grad = model(sample, 321, context).sample.detach()
    assert folds == []
    no_fold(monkeypatch)
    with torch.no_grad():
        assert torch.equal(hosted, model(sample, 321, context).sample)
    assert torch.equal(with_grad, model(sample, 321, context).sample.detach())
