"""Neutral hook points of one forward call, for a caller that wants to look at or change features on the way.

The model knows no host: a host translates its own patch protocol into a ``UNetHooks`` subclass and hands it in per
call (``CallOptions.hooks``). Every method's default changes nothing, so a subclass overrides only what it needs.

Skip indices count the encoder's skip features in the order they are stored: 0 is the output of ``conv_in`` +
``transformer_in``, then one per down-block layer and one per downsampler (the same numbering as the original
ModelScope checkpoint's ``input_blocks``). Decoder indices count the concatenations, first to last (the original
``output_blocks``). A transformer's ``LayerSite`` uses the same numbers: the layer it belongs to.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch

SPATIAL, TEMPORAL = "spatial", "temporal"
INPUT, MIDDLE, OUTPUT = "input", "middle", "output"


@dataclass(frozen=True)
class LayerSite:
    """Where a transformer sits. ``kind``: "spatial" (attends over the h*w tokens of each frame, cross-attends to
    text) or "temporal" (attends over the frames of each pixel). ``stage``: "input", "middle" or "output".
    ``index``: its layer's skip index (input), 0 (middle), or concatenation index (output); ``transformer_in`` is
    the temporal transformer at input 0."""
    kind: str
    stage: str
    index: int


# ``run(hidden, context, value)`` computes an attention layer the model's own way (processors, slicing, the call's
# attention function); ``context`` None means self-attention, ``value`` None means the values come from ``context``.
RunAttention = Callable[[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]], torch.Tensor]


class UNetHooks:
    # Set True in a subclass that overrides ``attention`` / ``between_attentions``: the transformers then call them
    # (the default path skips them, so plain calls pay nothing).
    wants_attention = False

    def encoder_skip(self, h: torch.Tensor, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(skip to store, features that continue down)`` for the encoder output number ``index``."""
        return h, h

    def decoder_concat(self, h: torch.Tensor, skip: torch.Tensor, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(h, skip)`` just before decoder concatenation number ``index`` (``torch.cat([h, skip], 1)``)."""
        return h, skip

    def attention(self, site: LayerSite, which: int, layer: torch.nn.Module, hidden: torch.Tensor,
                  context: Optional[torch.Tensor], run: RunAttention, feature_shape: Sequence[int]) -> torch.Tensor:
        """The output of attention ``which`` (1: self-attention, 2: cross-attention, or the temporal transformer's
        second self-attention) of the transformer at ``site``. ``layer`` has ``to_q``/``to_k``/``to_v``,
        ``project_out`` and ``heads`` for a caller that computes it itself; ``feature_shape`` is the transformer's
        input ``(rows, channels, height, width)``."""
        return run(hidden, context, None)

    def between_attentions(self, site: LayerSite, x: torch.Tensor) -> torch.Tensor:
        """The hidden state after the first attention's residual, before the second attention."""
        return x


NO_HOOKS = UNetHooks()
