"""Memory of one UNet3D call, from the config and the latent size alone (no weights, no torch tensors).

``estimate(config, workload, options)`` returns the bytes of the weights and the peak bytes of activations of the
largest UNet call a sampling step makes. The formula follows what is alive when each layer runs (no-grad inference;
a tensor is freed as soon as nothing refers to it):

    peak = max over layers L of  E * ( held(L) + work(L) ) + inputs
    held(L) = the encoder's skip tensors still on the stack at L (each up block holds its own skips, and its input,
              until it ends; within an up layer the concatenated input lives until the layer ends)
    work(L) = the layer's input plus its temporaries, per layer kind, in elements (P = rows*h*w pixels of the
              level, C its width, I = heads*head_dim the transformer width):
      ResNet (Cin->C)      P*(Cin + max(2*Cin, Cin + C, 3*C) + C) input, norm+SiLU pair, conv in/out, shortcut+sum,
                                                                  and one output-sized convolution buffer
      temporal conv        P*C*K_TCONV                            input, permuted norm copy, SiLU, Conv3d, sum
      transformer          P*(C + 2*I) + max(attention, FF)       residual, hidden state, its norm
        attention          P*I*5 + scores                         q, k, v, merged output, projection (slices
                                                                  are views: no copies)
        scores             2 * rows_per_step * q_len * kv_len     only where attention materialises its score
                                                                  matrix (plain matmul-softmax): the scaled
                                                                  scores and the softmax; rows_per_step is
                                                                  batch*heads, or when sliced the slice size
                                                                  times the batch rows of one step
                                                                  (``unet3d.network.attention.slice_rows``).
                                                                  Fused kernels (torch SDPA on CPU and CUDA,
                                                                  xformers) keep O(q_len) per row: not counted.
        feed-forward         P*I*13 / pieces + 2*P*I if chunked   GEGLU projection (8I), gelu(gate) multiplied by
                                                                  value in place (4I), a matmul buffer (I);
                                                                  chunking divides the 13I by
                                                                  the piece count and adds the outputs + cat
      upsampler            input (+ a contiguous copy when rows >= 64) + 3 x the upsampled size (interpolated,
                                                                  convolution output and buffer)
      downsampler          input + output
    E = bytes per activation element (compute dtype; fp8 weights compute in fp16).
    inputs = the per-frame text context (rows x tokens x context width) and the latent in/out.

The temporal transformer is the same block on (videos*h*w) sequences of F frames: its FF costs as much as the
spatial one's, its scores are F x F. ``transformer_in`` (8 heads x head size, wider than level 0 in the published
config) usually holds the largest GEGLU intermediate. With frame batching (context_length / max_batch_rows) the
rows of one call are those of the largest call ``unet3d.video.frame_batching.plan_calls`` makes.

Weights: parameter count (exact, from the architecture) x bytes of the storage dtype. K_TCONV and the other
counts were checked against RSS peaks on CPU (``benchmarks/estimate.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple

from ..dtypes import COMPUTE_DTYPES, WEIGHT_DTYPES, bytes_per_element
from ..network import config as cfgmod
from ..network.attention import slice_rows
from ..network.options import slice_size_for, validate_chunking, validate_slice_value
from ..network.parameters import count_parameters
from ..video.folding import frame_layout
from ..video.frame_batching import window_split
from ..video.windows import DEFAULT_CONTEXT_OVERLAP, window_lengths

K_TCONV = 5            # temporal conv working set, in multiples of its input (see docstring)
FF_WIDTHS = 13         # GEGLU projection (8I) + gelu(gate) multiplied in place (4I) + a matmul buffer (I)
ATTENTION_PATHS = ("fused", "materialized")


@dataclass(frozen=True)
class Workload:
    """One sampling step: ``videos`` videos of ``frames`` latent frames of ``height`` x ``width`` latent pixels,
    ``cond_chunks`` conditionings batched together (2 with cfg != 1, else 1), ``tokens`` text tokens."""
    frames: int
    height: int
    width: int
    videos: int = 1
    cond_chunks: int = 2
    tokens: int = 77


@dataclass(frozen=True)
class MemoryOptions:
    weight_dtype: str = "fp16"
    compute_dtype: Optional[str] = None          # None: the weight dtype (fp16 for fp8 weights)
    attention: str = "fused"                     # "fused" (SDPA/xformers) | "materialized" (matmul-softmax)
    attention_slice: Any = None                  # None | "auto" | "max" | int
    ff_chunk: Optional[Tuple[int, int]] = None   # (chunk_size, dim) as enable_forward_chunking
    context_length: int = 0                      # frame window length; 0 = no windows
    context_overlap: int = DEFAULT_CONTEXT_OVERLAP
    context_stride: int = 1
    closed_loop: bool = False
    max_batch_rows: int = 0                      # 0 = no cap


@dataclass(frozen=True)
class MemoryEstimate:
    weight_bytes: int
    activation_bytes: int
    peak_at: str                    # the layer where the activation peak happens
    call_videos: int                # videos (all cond chunks) in the largest UNet call
    call_frames: int                # frames per video in that call
    calls_per_step: int
    parameters: int
    details: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes


def dtype_bytes(name: str) -> int:
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"unknown weight dtype {name!r}; use one of {list(WEIGHT_DTYPES)}")
    return bytes_per_element(name)


# ------------------------------------------------------------------------------------------------ activations
class _Peak:
    def __init__(self):
        self.value, self.at = 0, ""

    def see(self, elements: float, where: str) -> None:
        if elements > self.value:
            self.value, self.at = elements, where


def _attention_work(rows: int, seq: int, kv: int, heads: int, inner: int, opts: MemoryOptions,
                    cross: bool) -> float:
    """Elements alive inside one attention call beyond the block's hidden state and its norm."""
    sliced = opts.attention_slice is not None
    size = rows * seq * inner
    kv_size = rows * kv * inner if cross else size
    work = size * 3 + 2 * kv_size   # q, out, merged, k, v (slices are views of q/k/v: nothing extra)
    if opts.attention == "materialized":
        if sliced:
            step_heads = slice_size_for(opts.attention_slice, heads)
            step_rows = slice_rows(rows, step_heads, seq, kv) * step_heads
        else:
            step_rows = rows * heads
        work += 2 * step_rows * seq * kv
    return work


def _ff_work(rows: int, seq: int, inner: int, chunk: Optional[Tuple[int, int]]) -> float:
    size = rows * seq * inner
    if chunk is None:
        return FF_WIDTHS * size
    chunk_size, dim = chunk
    pieces = max((rows if dim == 0 else seq) // chunk_size, 1)
    return FF_WIDTHS * size / pieces + 2 * size


def _transformer_work(rows: int, seq: int, channels: int, heads: int, head_dim: int, kv_tokens: int,
                      opts: MemoryOptions) -> float:
    """Spatial (rows = frames, seq = h*w) or temporal (rows = videos*h*w, seq = frames) transformer."""
    inner = heads * head_dim
    base = rows * seq * (channels + 2 * inner)
    cross = kv_tokens > 0
    attn1 = _attention_work(rows, seq, seq, heads, inner, opts, False)
    attn2 = _attention_work(rows, seq, kv_tokens if cross else seq, heads, inner, opts, cross)
    return base + max(attn1, attn2, _ff_work(rows, seq, inner, opts.ff_chunk))


def _resnet_work(pixels: int, cin: int, cout: int) -> float:
    return pixels * (cin + max(2 * cin, cin + cout, 3 * cout) + cout)


def activation_peak(config: Mapping[str, Any], videos: int, frames: int, height: int, width: int, tokens: int,
                    opts: MemoryOptions) -> Tuple[float, str]:
    """(peak elements, where) of one call on ``videos`` videos (all cond chunks) of ``frames`` frames."""
    cfg = cfgmod.normalize(**{k: v for k, v in config.items() if k in cfgmod.DEFAULTS})
    widths, layers = cfg["block_out_channels"], cfg["layers_per_block"]
    geometry = cfgmod.level_attention_geometry(cfg)
    rows = videos * frames
    sizes = [(height, width)]
    for _ in widths[1:]:
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    area = [h * w for h, w in sizes]
    peak = _Peak()
    kv = tokens if any(t.startswith("CrossAttn") for t in cfg["down_block_types"]) else 0

    def layer(held, level, cin, c, attention, where, input_held=0):
        """A resnet/tconv/transformers layer whose input (cin wide) is *not* in ``held``; ``input_held``: the
        layer input stays referenced by the caller while the rest of the layer runs (the up blocks' concat)."""
        p = rows * area[level]
        peak.see(held + _resnet_work(p, cin, c), f"{where} resnet")
        held += input_held
        peak.see(held + p * c * K_TCONV, f"{where} temporal conv")
        if attention:
            heads, dim = geometry[level]
            peak.see(held + _transformer_work(rows, area[level], c, heads, dim, kv, opts), f"{where} attention")
            peak.see(held + _transformer_work(videos * area[level], frames, c, heads, dim, 0, opts),
                     f"{where} temporal attention")

    c0 = widths[0]
    p0 = rows * area[0]
    peak.see(p0 * (cfg["in_channels"] + c0), "conv_in")
    tin_heads, tin_dim = cfgmod.transformer_in_geometry(cfg)
    peak.see(_transformer_work(videos * area[0], frames, c0, tin_heads, tin_dim, 0, opts), "transformer_in")
    skips = [p0 * c0]
    for i, kind in enumerate(cfg["down_block_types"]):
        for j in range(layers):
            cin = (widths[i - 1] if i else c0) if j == 0 else widths[i]
            held = sum(skips) - skips[-1]     # the layer input is the last skip
            layer(held, i, cin, widths[i], kind.startswith("CrossAttn"), f"down_blocks.{i}.{j}")
            skips.append(rows * area[i] * widths[i])
        if i < len(widths) - 1:
            out = rows * area[i + 1] * widths[i]
            peak.see(sum(skips) + out, f"down_blocks.{i} downsampler")
            skips.append(out)
    last = len(widths) - 1
    c = widths[-1]
    held = sum(skips) - skips[-1]
    layer(held, last, c, c, False, "mid_block.0")
    layer(held, last, c, c, True, "mid_block.1")
    rev = list(reversed(widths))
    h_width = c
    for i, kind in enumerate(cfg["up_block_types"]):
        level = last - i
        out = rev[i]
        block_skips = skips[-(layers + 1):]
        skips = skips[:-(layers + 1)]
        p = rows * area[level]
        held_all = sum(skips) + sum(block_skips) + p * h_width   # the caller holds the block input until it ends
        for j in range(layers + 1):
            skip_width = block_skips[-1 - j] // p
            previous = p * h_width if j else 0
            cat = p * (h_width + skip_width)
            peak.see(held_all + previous + cat, f"up_blocks.{i}.{j} concat")
            layer(held_all, level, h_width + skip_width, out, kind.startswith("CrossAttn"), f"up_blocks.{i}.{j}",
                  input_held=cat)
            h_width = out
        if i < len(widths) - 1:
            big = rows * area[level - 1] * out
            copy = p * out if rows >= 64 else 0
            peak.see(sum(skips) + p * out + copy + 3 * big, f"up_blocks.{i} upsampler")
    peak.see(sum(block_skips) + p0 * c0 * 3, "conv_norm_out")   # the last block's skips live to the end
    return peak.value, peak.at


# ------------------------------------------------------------------------------------------------ the call
def largest_call(workload: Workload, opts: MemoryOptions) -> Tuple[int, int, int]:
    """(videos in the largest call (all chunks), frames per video in it, calls per step), as
    ``unet3d.video.frame_batching.plan_calls`` would plan them, counted without building the plan."""
    videos, frames = workload.videos, workload.frames
    length = opts.context_length or frames
    if length >= frames and not opts.max_batch_rows:
        return videos * workload.cond_chunks, frames, 1
    overlap = min(opts.context_overlap, max(length - 1, 0))
    lengths = window_lengths(frames, min(length, frames), overlap if length < frames else 0, opts.context_stride,
                             opts.closed_loop)
    layout = frame_layout(workload.cond_chunks * videos * frames, workload.cond_chunks, frames if videos > 1 else None)
    biggest, calls = (0, 0), 0
    for window, count in lengths.items():          # the first largest call wins ties, as max() over the plan does
        split_calls, call_videos = window_split(layout, window, opts.max_batch_rows)
        calls += count * split_calls
        if call_videos * window > biggest[0] * biggest[1]:
            biggest = (call_videos, window)
    return biggest[0], biggest[1], calls


def validate(workload: Workload, opts: MemoryOptions) -> None:
    for name in ("frames", "height", "width", "videos", "cond_chunks"):
        value = getattr(workload, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"workload `{name}` must be a positive integer, got {value!r}")
    if opts.attention not in ATTENTION_PATHS:
        raise ValueError(f"attention must be one of {ATTENTION_PATHS}, got {opts.attention!r}")
    if opts.attention_slice is not None:
        validate_slice_value(opts.attention_slice)
    if opts.ff_chunk is not None:
        validate_chunking(*opts.ff_chunk)
    dtype_bytes(opts.weight_dtype)
    if opts.compute_dtype and opts.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"unknown compute dtype {opts.compute_dtype!r}; use one of {list(COMPUTE_DTYPES)}")


def estimate(config: Mapping[str, Any], workload: Workload, opts: MemoryOptions = MemoryOptions(),
             parameters: Optional[int] = None) -> MemoryEstimate:
    """Weights and peak activation bytes of the largest UNet call of one sampling step (see the module docstring).

    ``parameters``: the count when already known (e.g. summed from a checkpoint header), else computed."""
    validate(workload, opts)
    params = count_parameters(config) if parameters is None else parameters
    weight_bytes = params * dtype_bytes(opts.weight_dtype)
    compute = opts.compute_dtype or ("fp16" if dtype_bytes(opts.weight_dtype) == 1 else opts.weight_dtype)
    e = dtype_bytes(compute)
    videos, frames, calls = largest_call(workload, opts)
    elements, where = activation_peak(config, videos, frames, workload.height, workload.width, workload.tokens, opts)
    rows = videos * frames
    cross = config.get("cross_attention_dim", 1024) or 0
    inputs = rows * workload.tokens * cross + 3 * rows * config.get("in_channels", 4) * workload.height * workload.width
    return MemoryEstimate(weight_bytes=int(weight_bytes), activation_bytes=int((elements + inputs) * e),
                          peak_at=where, call_videos=videos, call_frames=frames, calls_per_step=calls,
                          parameters=params, details={"compute_dtype": compute, "bytes_per_element": e})
