"""Row tiles on CPU (``unet3d/network/tiling.py``): the transformers run a few rows at a time and give the numbers of
one whole pass. References: diffusers on the same weights, and the same model with tiling out of reach (the default
budget never tiles these test sizes)."""
import pytest
import torch
from parity_helpers import TINY, inputs, randomize_, rel_err, twins

import unet3d
from comfy_runner.offline import plugin_module, sampler_call
from unet3d.network import tiling
from unet3d.network.attention import AttnProcessor2_0
from unet3d.network.hooks import UNetHooks

TOL = 1e-5


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(tiling, "TILE_BYTES", 8192)   # a few rows per tile at test sizes


def calls_of(module, log):
    """Record the row count of every call of ``module``."""
    return module.register_forward_hook(lambda mod, args, out: log.append(args[0].shape[0]))


def test_tiled_forward_matches_diffusers_and_really_tiles(small_tiles):
    reference, ours = twins(seed=5, **TINY)
    sample, context = inputs(2, 3, 16, 16, dim=TINY["cross_attention_dim"])
    rows_in, rows_spatial = [], []
    handles = [calls_of(ours.transformer_in.proj_in, rows_in),
               calls_of(ours.down_blocks[0].attentions[0].proj_in, rows_spatial)]
    with torch.no_grad():
        expected = reference(sample, 321, context).sample
        got = ours(sample, 321, context).sample
    for h in handles:
        h.remove()
    assert rel_err(got, expected) <= TOL
    assert len(rows_in) > 1 and sum(rows_in) == 2 * 16 * 16       # every location's frame sequence, in tiles
    assert len(rows_spatial) > 1 and sum(rows_spatial) == 2 * 3    # every frame, in tiles


def test_tiles_equal_one_pass_with_per_frame_context_and_a_text_mask(monkeypatch):
    torch.manual_seed(0)
    model = randomize_(unet3d.UNet3DConditionModel(**TINY), seed=2).eval()
    sample, _ = inputs(2, 3, 16, 16)
    gen = torch.Generator().manual_seed(9)
    context = torch.randn(6, 5, TINY["cross_attention_dim"], generator=gen)   # one context per frame
    mask = torch.ones(6, 5)
    mask[1, 3:] = 0
    mask[4, 1:] = 0
    with torch.no_grad():
        whole = model(sample, 321, context, attention_mask=mask).sample
        monkeypatch.setattr(tiling, "TILE_BYTES", 8192)
        tiled = model(sample, 321, context, attention_mask=mask).sample
    assert rel_err(tiled, whole) <= TOL


class RecordingProcessor:
    """A foreign processor: it may mix rows (as cross-frame attention does), so it must see all of them."""

    def __init__(self, log):
        self.log, self.inner = log, AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        self.log.append(hidden_states.shape[0])
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask)


class AttentionHooks(UNetHooks):
    wants_attention = True


def test_foreign_processors_hooks_chunking_and_autograd_see_every_row(small_tiles):
    torch.manual_seed(0)
    model = randomize_(unet3d.UNet3DConditionModel(**TINY), seed=2).eval()
    sample, context = inputs(1, 3, 16, 16, dim=TINY["cross_attention_dim"])
    rows = []
    handle = calls_of(model.transformer_in.proj_in, rows)
    with torch.no_grad():
        model(sample, 321, context, call_options={"ff_chunk": (1, 0)})
        assert rows == [16 * 16], "feed-forward chunking by rows turns tiling off"
        rows.clear()
        model(sample, 321, context, call_options={"ff_chunk": (1, 1)})
        assert len(rows) > 1, "chunking along the sequence works inside a tile"
        log = []
        model.transformer_in.transformer_blocks[0].attn1.set_processor(RecordingProcessor(log))
        rows.clear()
        model(sample, 321, context)
        assert rows == [16 * 16] and log == [16 * 16]
        model.set_attn_processor(AttnProcessor2_0())
        rows.clear()
        model(sample, 321, context, call_options={"hooks": AttentionHooks()})
        assert rows == [16 * 16], "a hook that sees attention gets the whole feature map"
    rows.clear()
    model(sample, 321, context)     # autograd on: one pass, as diffusers' training code expects
    assert rows == [16 * 16]
    handle.remove()


def test_tile_size_follows_the_budget_and_stays_off_where_it_does_not_apply():
    x = torch.zeros(2, 2)
    with torch.no_grad():
        # 16 tokens x 512 wide: a row's feed-forward buffer is 16*512*8*4 bytes = 256 KiB -> 64 rows in 16 MiB
        assert tiling.rows_per_tile(x, 4096, 16, 512) == 64
        assert tiling.rows_per_tile(x, 64, 16, 512) is None                  # one tile holds them all
        assert tiling.rows_per_tile(x, 16, 100_000, 512) == 1                # a row over budget is its own tile
        assert tiling.rows_per_tile(x.half(), 4096, 16, 512) == 128
        assert tiling.rows_per_tile(torch.zeros(2, 2, device="meta"), 4096, 16, 512) is None
    assert tiling.rows_per_tile(x, 4096, 16, 512) is None                    # autograd on


def test_host_attention_kernel_is_tiled_like_the_default(monkeypatch):
    """ComfyUI's path: the host's attention kernel (and an ``optimized_attention_override``) get tiles too."""
    adapter = plugin_module("nodes.unet_adapter")
    torch.manual_seed(0)
    model = randomize_(adapter.ComfyUNet3D(**TINY), seed=3).eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2 * 4, 4, 16, 16, generator=gen)
    t = torch.full((8,), 500.0)
    context = torch.randn(2, 5, TINY["cross_attention_dim"], generator=gen)
    batches = []

    def override(kernel, q, k, v, heads, **kwargs):
        batches.append(q.shape[0])
        return kernel(q, k, v, heads, **{key: val for key, val in kwargs.items() if key == "mask"})
    options = {"optimized_attention_override": override}
    with torch.no_grad():
        whole = sampler_call(model, x, t, context, frames_per_video=4, transformer_options=options)
        whole_calls = len(batches)
        # the plugin's own copy of the package (imported relative to the plugin, as ComfyUI does)
        monkeypatch.setattr(plugin_module("unet3d.network.tiling"), "TILE_BYTES", 8192)
        tiled = sampler_call(model, x, t, context, frames_per_video=4, transformer_options=options)
    assert len(batches) - whole_calls > whole_calls     # more, smaller calls
    assert rel_err(tiled, whole) <= TOL
