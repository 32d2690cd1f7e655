"""FreeU (Si et al. 2023) as pure tensor functions: scale decoder backbone features, damp skip low frequencies."""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import torch
import torch.fft as fft


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Multiply the centred ``2*threshold`` square of the 2-D spectrum of each (row, channel) map by ``scale``."""
    dtype = x.dtype
    x = x.float()
    spectrum = fft.fftshift(fft.fftn(x, dim=(-2, -1)), dim=(-2, -1))
    h, w = x.shape[-2:]
    mask = torch.ones_like(x[:1, :1])
    ch, cw = h // 2, w // 2
    mask[..., ch - threshold:ch + threshold, cw - threshold:cw + threshold] = scale
    spectrum = spectrum * mask
    out = fft.ifftn(fft.ifftshift(spectrum, dim=(-2, -1)), dim=(-2, -1)).real
    return out.to(dtype)


def freeu_stage(up_index: int, params: Optional[Mapping[str, float]]) -> Optional[Tuple[float, float]]:
    """(backbone factor b, skip factor s) for an up block, or None. Like diffusers: only the first two up blocks,
    and a zero in any of the four values switches FreeU off."""
    if not params or up_index not in (0, 1) or not all(params[k] for k in ("s1", "s2", "b1", "b2")):
        return None
    return (params["b1"], params["s1"]) if up_index == 0 else (params["b2"], params["s2"])


def apply_freeu(hidden: torch.Tensor, skip: torch.Tensor, b: float, s: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scale the first half of the backbone channels by ``b``; filter the skip features with scale ``s``."""
    half = hidden.shape[1] // 2
    hidden = torch.cat([hidden[:, :half] * b, hidden[:, half:]], dim=1)
    return hidden, fourier_filter(skip, threshold=1, scale=s)
