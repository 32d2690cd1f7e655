"""Neutral hook points of one forward call, for a caller that wants to look at or change features on the way.

The model knows no host: a host translates its own patch protocol into a ``UNetHooks`` subclass and hands it in per
call (``CallOptions.hooks``). Every method's default changes nothing, so a subclass overrides only what it needs.

Skip indices count the encoder's skip features in the order they are stored: 0 is the output of ``conv_in`` +
``transformer_in``, then one per down-block layer and one per downsampler (the same numbering as the original
ModelScope checkpoint's ``input_blocks``). Decoder indices count the concatenations, first to last (the original
``output_blocks``).
"""
from __future__ import annotations

from typing import Tuple

import torch


class UNetHooks:
    def encoder_skip(self, h: torch.Tensor, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(skip to store, features that continue down)`` for the encoder output number ``index``."""
        return h, h

    def decoder_concat(self, h: torch.Tensor, skip: torch.Tensor, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(h, skip)`` just before decoder concatenation number ``index`` (``torch.cat([h, skip], 1)``)."""
        return h, skip


NO_HOOKS = UNetHooks()
