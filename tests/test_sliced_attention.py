"""Sliced attention (``unet3d/network/attention.py``): steps over heads and big groups of batch rows, never one Python
iteration per temporal row, with the score peak still bounded. Reference: the unsliced torch SDPA result."""
import torch

from unet3d.memory.estimate import MemoryOptions, Workload, estimate
from unet3d.network.attention import MIN_SLICE_SCORES, bmm_attention, sdpa_attention, slice_rows, sliced_attention


def qkv(batch, q_len, kv_len, inner, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, q_len, inner, generator=gen), torch.randn(batch, kv_len, inner, generator=gen),
            torch.randn(batch, kv_len, inner, generator=gen))


def counting(core, calls):
    def spy(q, k, v, heads, mask=None):
        calls.append((q.shape[0], heads, q.shape[1], k.shape[1]))
        return core(q, k, v, heads, mask)
    return spy


def test_temporal_rows_are_sliced_in_big_groups():
    """Temporal attention at 576x320: videos*h*w rows of F frames; 'auto' slicing of 5 heads."""
    q, k, v = qkv(2 * 40 * 72, 24, 24, 5 * 8)
    calls = []
    got = sliced_attention(q, k, v, 5, slice_size=2, core=counting(bmm_attention, calls))
    assert len(calls) <= 3 * 2          # 3 head groups, at most 2 row groups each (not 5760 * 3 calls)
    assert max(rows * heads * ql * kl for rows, heads, ql, kl in calls) <= MIN_SLICE_SCORES
    assert torch.allclose(got, sdpa_attention(q, k, v, 5), atol=1e-5, rtol=1e-5)


def test_long_sequences_keep_the_one_row_bound_and_masks_follow_their_rows():
    q, k, v = qkv(6, 1100, 1100, 4 * 8)   # two rows of 2 x 1100 x 1100 scores exceed the floor: one row a step
    mask = torch.ones(6, 1, 1100, dtype=torch.bool)
    mask[3, :, 5:] = False
    calls = []
    got = sliced_attention(q, k, v, 4, mask, slice_size=2, core=counting(sdpa_attention, calls))
    assert [rows for rows, *_ in calls] == [1] * 12
    assert torch.allclose(got, sdpa_attention(q, k, v, 4, mask), atol=1e-5, rtol=1e-5)


def test_slice_rows_and_the_estimate_agree():
    assert slice_rows(5760, 2, 24, 24) == MIN_SLICE_SCORES // (2 * 24 * 24)
    assert slice_rows(10, 2, 24, 24) == 10 and slice_rows(48, 1, 2880, 2880) == 1
    # narrow channels, many heads: the score matrices, not the feed-forward, make the peak
    config = dict(block_out_channels=(8, 16), cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8,
                  down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                  up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
    work = Workload(frames=24, height=40, width=72)

    def peak(**kw):
        return estimate(config, work, MemoryOptions(attention="materialized", **kw)).activation_bytes
    assert peak(attention_slice="max") < peak(attention_slice="auto") < peak()
