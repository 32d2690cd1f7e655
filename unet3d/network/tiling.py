"""Row tiles for the transformers on CPU: the same numbers, computed a few sequences at a time.

Every layer between a transformer's ``proj_in`` and ``proj_out`` works on each row on its own (a row is one frame's
tokens in the spatial transformer, one location's frames in the temporal one): LayerNorm per token, attention within
the row, linear layers per token. On CPU, running them over all rows at once allocates activations of hundreds of
MiB (the feed-forward's is 8x the width), and the C allocator hands buffers that large out as fresh pages each time,
so each one is page-faulted and zeroed by the kernel before it is used, and falls out of the cache between layers.
In tiles whose largest buffer stays under ``TILE_BYTES`` the allocator reuses the same memory and the tile stays in
cache. Each row is computed the same way; only the matrix kernels' blocking may change with the row count (results
agree to float rounding, and were bit-identical at the benchmark's sizes).

GPUs keep their own buffer cache and want large batches, so tiling is for CPU tensors only, in inference, and not
inside ``torch.compile`` (one graph, no Python loop).
"""
from __future__ import annotations

from typing import Optional

import torch

# Largest buffer of one tile (the feed-forward's GEGLU projection). 16 MiB stays under glibc's largest dynamic
# mmap threshold (32 MiB), so freed tiles are reused rather than returned to the kernel.
TILE_BYTES = 16 << 20
FEED_FORWARD_WIDTHS = 8  # GEGLU projects to 2 x 4 x the width


def rows_per_tile(x: torch.Tensor, rows: int, tokens_per_row: int, width: int) -> Optional[int]:
    """Rows per tile for ``x`` (``rows`` rows of ``tokens_per_row`` tokens, ``width`` wide inside), or None when the
    whole tensor is one tile or tiling does not apply (not CPU, autograd on, or compiling)."""
    if x.device.type != "cpu" or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    row_bytes = max(tokens_per_row * width * FEED_FORWARD_WIDTHS * x.element_size(), 1)
    step = max(1, TILE_BYTES // row_bytes)
    return step if step < rows else None
