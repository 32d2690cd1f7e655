"""unet3d.memory.estimate (memory of one UNet call) and unet3d.checkpoints.summary (config from a checkpoint header,
no weights)."""
from __future__ import annotations

import json
import struct

import pytest
import torch

from unet3d import UNet3DConditionModel
from unet3d.checkpoints.summary import PUBLISHED_PARAMETERS, read_safetensors_header, summarize_checkpoint
from unet3d.errors import CheckpointError
from unet3d.memory.estimate import MemoryOptions, Workload, estimate
from unet3d.network.parameters import count_parameters

TINY = dict(block_out_channels=(32, 64), norm_num_groups=8, layers_per_block=1, cross_attention_dim=64,
            attention_head_dim=8, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
ZEROSCOPE_576W = Workload(frames=24, height=40, width=72, videos=1, cond_chunks=2)
GB = 1e9


def meta_state_dict(config: dict) -> dict:
    with torch.device("meta"):
        return UNet3DConditionModel(**config).state_dict()


@pytest.mark.parametrize("config", [{}, TINY, dict(TINY, time_cond_proj_dim=16),
                                    dict(TINY, num_attention_heads=(2, 4)), dict(TINY, layers_per_block=3),
                                    dict(block_out_channels=(64, 128, 256, 256), norm_num_groups=None)])
def test_parameter_count_is_exact(config):
    assert count_parameters(config) == sum(t.numel() for t in meta_state_dict(config).values())


def test_published_config_numbers():
    est = estimate({}, ZEROSCOPE_576W)
    assert est.parameters == PUBLISHED_PARAMETERS
    assert est.weight_bytes == PUBLISHED_PARAMETERS * 2
    assert (est.call_videos, est.call_frames, est.calls_per_step) == (2, 24, 1)
    assert 1.5 * GB < est.activation_bytes < 4 * GB, est
    assert est.total_bytes == est.weight_bytes + est.activation_bytes


def test_options_move_the_peak_the_right_way():
    base = estimate({}, ZEROSCOPE_576W)
    fp32 = estimate({}, ZEROSCOPE_576W, MemoryOptions(weight_dtype="fp32"))
    assert fp32.weight_bytes == 2 * base.weight_bytes and fp32.activation_bytes == 2 * base.activation_bytes
    fp8 = estimate({}, ZEROSCOPE_576W, MemoryOptions(weight_dtype="fp8_e4m3fn"))
    assert fp8.weight_bytes * 2 == base.weight_bytes and fp8.activation_bytes == base.activation_bytes
    chunked = estimate({}, ZEROSCOPE_576W, MemoryOptions(ff_chunk=(1, 1)))
    assert chunked.activation_bytes < 0.7 * base.activation_bytes
    matmul = estimate({}, ZEROSCOPE_576W, MemoryOptions(attention="materialized"))
    assert matmul.activation_bytes > 2 * base.activation_bytes and "attention" in matmul.peak_at
    sliced = estimate({}, ZEROSCOPE_576W, MemoryOptions(attention="materialized", attention_slice="auto"))
    assert sliced.activation_bytes < 0.5 * matmul.activation_bytes
    longer = estimate({}, Workload(64, 40, 72))
    windowed = estimate({}, Workload(64, 40, 72), MemoryOptions(context_length=16, max_batch_rows=16))
    assert windowed.activation_bytes < 0.2 * longer.activation_bytes
    assert (windowed.call_videos, windowed.call_frames) == (1, 16) and windowed.calls_per_step > 4
    assert estimate({}, Workload(64, 40, 72), MemoryOptions(context_length=16)).call_videos == 2


def test_activations_scale_with_frames_and_area():
    small = estimate(TINY, Workload(8, 16, 16)).activation_bytes
    assert estimate(TINY, Workload(16, 16, 16)).activation_bytes > 1.8 * small
    assert estimate(TINY, Workload(8, 32, 32)).activation_bytes > 3.5 * small


@pytest.mark.parametrize("workload, options, word", [
    (Workload(0, 40, 72), MemoryOptions(), "frames"),
    (Workload(8, 40, 72), MemoryOptions(attention="flash"), "attention"),
    (Workload(8, 40, 72), MemoryOptions(attention_slice=0), "slice"),
    (Workload(8, 40, 72), MemoryOptions(ff_chunk=(1, 2)), "dim"),
    (Workload(8, 40, 72), MemoryOptions(weight_dtype="fp4"), "dtype"),
])
def test_bad_inputs_name_the_value(workload, options, word):
    with pytest.raises(ValueError, match=word):
        estimate({}, workload, options)


# ---------------------------------------------------------------------------------------------- headers
def write_sparse_safetensors(path, state_dict: dict, dtype: str = "F16", element_bytes: int = 2) -> None:
    """A safetensors file with the real header and a hole for the data (no disk space, no tensors)."""
    header, offset = {}, 0
    for name, tensor in state_dict.items():
        size = tensor.numel() * element_bytes
        header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_full_size_header_gives_the_published_config_without_reading_weights(tmp_path, layout):
    from helpers_checkpoint import diffusers_to_original

    sd = meta_state_dict({})
    if layout == "original":
        from unet3d.network.config import DEFAULTS
        sd = diffusers_to_original(sd, dict(DEFAULTS))
    path = tmp_path / "zeroscope.safetensors"
    write_sparse_safetensors(path, sd)
    assert path.stat().st_size > 2.8 * GB
    summary = summarize_checkpoint(path)
    est = estimate(summary.config, ZEROSCOPE_576W, MemoryOptions(weight_dtype=summary.storage_dtype),
                   parameters=summary.parameters)
    assert len(read_safetensors_header(path)) == 1480
    assert summary.parameters == PUBLISHED_PARAMETERS and summary.storage_dtype == "fp16"
    assert summary.config["block_out_channels"] == (320, 640, 1280, 1280)
    assert summary.config["attention_head_dim"] == 64 and summary.how == "safetensors header"
    assert est.weight_bytes == PUBLISHED_PARAMETERS * 2


def test_diffusers_folder_uses_config_json(tmp_path):
    unet = tmp_path / "pipe" / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel", **TINY}))
    write_sparse_safetensors(unet / "diffusion_pytorch_model.safetensors", meta_state_dict(TINY), "F32", 4)
    summary = summarize_checkpoint(tmp_path / "pipe")
    assert summary.how == "config.json" and summary.storage_dtype == "fp32"
    assert summary.parameters == count_parameters(TINY)


def test_pickle_files_are_recognised_by_size_or_need_a_config(tmp_path):
    zeroscope = tmp_path / "text2video_pytorch_model.pth"
    with open(zeroscope, "wb") as f:
        f.write(b"PK\x03\x04")
        f.truncate(PUBLISHED_PARAMETERS * 2 + 123_456)
    summary = summarize_checkpoint(zeroscope)
    assert summary.how == "file size" and summary.storage_dtype == "fp16"
    assert summary.parameters == PUBLISHED_PARAMETERS
    other = tmp_path / "custom.pth"
    other.write_bytes(b"\x80\x02" + b"\0" * 1000)
    with pytest.raises(CheckpointError, match="config"):
        summarize_checkpoint(other)
    assert summarize_checkpoint(other, config=TINY).parameters == count_parameters(TINY)


def test_damaged_header_is_reported(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        summarize_checkpoint(bad)


def test_plan_names_the_cheapest_remedy_that_fits():
    from unet3d.memory.fit import plan

    opts = MemoryOptions(weight_dtype="fp16")
    est = estimate({}, ZEROSCOPE_576W, opts)
    roomy = plan({}, ZEROSCOPE_576W, opts, est.total_bytes + 1)
    assert roomy["fits"] and not roomy["suggestions"]
    tight = plan({}, ZEROSCOPE_576W, opts, int(est.weight_bytes + 0.7 * est.activation_bytes))
    assert tight["fits"] is False and tight["first_fit"] == "ff_chunk"
    hopeless = plan({}, ZEROSCOPE_576W, opts, 10**8)
    assert hopeless["first_fit"] is None and hopeless["suggestions"][-1]["key"] == "stream_weights"
    assert plan({}, ZEROSCOPE_576W, opts, None)["fits"] is None


def test_calls_are_counted_as_the_frame_batching_planner_makes_them():
    """``largest_call`` counts windows without building them (a request of 4096 frames in windows of one frame must
    not make millions of call objects); it must agree with the plan that sampling really runs."""
    import random

    from unet3d.memory.estimate import largest_call
    from unet3d.video.folding import frame_layout
    from unet3d.video.frame_batching import plan_calls
    from unet3d.video.windows import WindowSettings

    rng, checked = random.Random(0), 0
    for _ in range(600):
        videos, chunks, frames, length = rng.randint(1, 3), rng.randint(1, 2), rng.randint(1, 70), rng.randint(1, 30)
        opts = MemoryOptions(context_length=length, context_overlap=rng.randint(0, length - 1),
                             context_stride=rng.randint(1, 4), closed_loop=rng.random() < 0.3,
                             max_batch_rows=rng.choice([0, rng.randint(length, 150)]))
        window = min(length, frames)
        settings = WindowSettings(window, opts.context_overlap if length < frames else 0, opts.context_stride,
                                  opts.closed_loop)
        layout = frame_layout(chunks * videos * frames, chunks, frames if videos > 1 else None)
        calls = plan_calls(layout, settings.windows(frames), opts.max_batch_rows)
        biggest = max(calls, key=lambda call: len(call.videos) * call.frames)
        got = largest_call(Workload(frames, 4, 4, videos, chunks), opts)
        assert got == (len(biggest.videos), biggest.frames, len(calls)), (videos, chunks, frames, opts)
        checked += 1
    assert checked == 600
