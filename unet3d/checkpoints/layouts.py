"""State-dict layouts: unwrapping, prefix stripping, recognising what a checkpoint is, and mapping the original
ModelScope / Zeroscope names (``input_blocks`` / ``middle_block`` / ``output_blocks``) to diffusers names.

Pure functions on ``{name: tensor}`` dicts; nothing here reads files or builds models. The original UNetSD numbers
its encoder ``input_blocks.<i>`` (0: conv_in + transformer_in; then per level ``layers_per_block`` layers and one
downsampler ``op``), each layer ``.0`` ResBlock (with its ``temopral_conv``), ``.1`` spatial and ``.2`` temporal
transformer; ``middle_block.0..3``; the decoder ``output_blocks.<i>`` likewise (upsamplers under ``.conv``).
"""
from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from ..errors import CheckpointError, WrongModelError

DIFFUSERS = "diffusers"
ORIGINAL = "original"  # ModelScope UNetSD names, as in text2video_pytorch_model.pth

# Wrapper keys of training checkpoints (Lightning, DeepSpeed, DDP) that hold the real state dict.
WRAPPER_KEYS = ("state_dict", "module", "model", "model_state_dict", "unet")
# Longest first: "model.diffusion_model." must win over "diffusion_model.".
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "unet.", "module.", "model.")

_DIFFUSERS_ROOTS = ("conv_in.", "time_embedding.", "transformer_in.", "down_blocks.", "mid_block.", "up_blocks.",
                    "conv_norm_out.", "conv_out.")
_ORIGINAL_ROOTS = ("time_embed.", "input_blocks.", "middle_block.", "output_blocks.", "out.")
EXPECTED = ("a UNet3DConditionModel (ModelScope text-to-video / Zeroscope) checkpoint, either in diffusers names "
            "(conv_in, down_blocks.*.temp_convs, transformer_in, ...) or in the original ModelScope names "
            "(input_blocks.*.0.temopral_conv, ...)")


def unwrap(obj: Any, source: str) -> Dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint: descends into wrapper keys and single-entry dicts, drops
    non-tensor entries (epoch counters, optimizer settings)."""
    seen = 0
    while isinstance(obj, Mapping) and seen < 8:
        seen += 1
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None and len(obj) == 1:
            inner = next(iter(obj.values()))
        if not isinstance(inner, Mapping):
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a dict of tensors; expected {EXPECTED}.")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:10])) or "nothing"
        raise CheckpointError(f"{source} contains no tensors (top-level entries: {keys}); expected {EXPECTED}.")
    return tensors


def _has_roots(keys: Iterable[str], roots: Tuple[str, ...]) -> bool:
    return any(k.startswith(roots) for k in keys)


def strip_prefix(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Optional[str]]:
    """Remove a wrapper prefix such as ``model.diffusion_model.``. When a file holds several models (a full
    Stable Diffusion-style checkpoint), only the keys under the UNet prefix are kept. Returns (dict, prefix)."""
    roots = _DIFFUSERS_ROOTS + _ORIGINAL_ROOTS
    if _has_roots(sd, roots) and not any(k.startswith(PREFIXES[:3]) for k in sd):
        return sd, None
    for prefix in PREFIXES:
        inner = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if inner and _has_roots(inner, roots):
            deeper, more = strip_prefix(inner)
            return deeper, prefix + (more or "")
    return sd, None


def detect_layout(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """DIFFUSERS, ORIGINAL, or None when neither set of top-level names is present."""
    n_diff = sum(k.startswith(_DIFFUSERS_ROOTS) for k in sd)
    n_orig = sum(k.startswith(_ORIGINAL_ROOTS) for k in sd)
    if not n_diff and not n_orig:
        return None
    return DIFFUSERS if n_diff >= n_orig else ORIGINAL


# (pattern, description) checked in order on all key names; the first hit names the family.
_FOREIGN_MARKERS: List[Tuple[str, str]] = [
    (r"(^|\.)motion_modules\.", "an AnimateDiff motion module (temporal layers meant to be added to an SD1.5/SDXL "
                                "image UNet, not a complete video UNet)"),
    (r"(time_stack|time_mixer|temporal_res_block|spatial_res_block|time_pos_embed)\.",
     "a Stable Video Diffusion UNet (UNetSpatioTemporalConditionModel)"),
    (r"(lora_down|lora_up|lora_A|lora_B|\.alpha$|lora\.)", "a LoRA (weight deltas, not a complete model)"),
    (r"(fps_embedding|image_latents_proj_in|image_latents_context_embedding)\.", "an I2VGen-XL UNet"),
    (r"(^|\.)(encoder\.down\.|decoder\.up\.|encoder\.down_blocks\.|decoder\.up_blocks\.|quant_conv\.|"
     r"post_quant_conv\.|encoder\.mid\.|decoder\.mid\.)", "a VAE / autoencoder (AutoencoderKL)"),
    (r"(text_model\.|transformer\.resblocks\.|^resblocks\.|token_embedding\.|positional_embedding|"
     r"encoder\.block\.\d+\.layer\.|conditioner\.embedders\.|cond_stage_model\.)",
     "a text encoder (CLIP / OpenCLIP / T5)"),
]
_TEMPORAL_MARKERS = ("temopral_conv.", "temp_convs.", "temp_attentions.", "transformer_in.")


def identify_foreign(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """A description of the model family when the keys are clearly not a UNet3D, else None."""
    keys = list(sd)
    for pattern, description in _FOREIGN_MARKERS:
        rx = re.compile(pattern)
        if any(rx.search(k) for k in keys):
            return description
    layout = detect_layout(sd)
    if layout is not None and not any(m in k for k in keys for m in _TEMPORAL_MARKERS):
        return _describe_image_unet(sd, layout)
    return None


def _describe_image_unet(sd: Mapping[str, torch.Tensor], layout: str) -> str:
    cross = [v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight") and v.ndim == 2]
    width = cross[0] if cross else None
    family = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}.get(width, "Stable Diffusion-style")
    if any(k.startswith(("label_emb.", "add_embedding.")) for k in sd):
        family = "SDXL"
    names = "diffusers names" if layout == DIFFUSERS else "original LDM names"
    extra = f", text width {width}" if width else ""
    return f"an image UNet ({family} UNet2DConditionModel in {names}{extra}) with no temporal layers"


def check_is_unet3d(sd: Mapping[str, torch.Tensor], source: str) -> str:
    """Raise WrongModelError unless ``sd`` looks like a UNet3D; returns its layout."""
    foreign = identify_foreign(sd)
    if foreign:
        raise WrongModelError(f"{source} looks like {foreign}. This loader expects {EXPECTED}.")
    layout = detect_layout(sd)
    if layout is None:
        sample = ", ".join(list(sd)[:5])
        raise WrongModelError(f"{source} does not look like a UNet3D checkpoint (first keys: {sample}). "
                              f"This loader expects {EXPECTED}.")
    return layout


# ---- original ModelScope names -> diffusers names ---------------------------------------------------------------

_RESNET_RENAMES = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
                   ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."))
_BLOCK_RE = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.(?:(\d+)\.)?(.*)$")
_MIDDLE_RE = re.compile(r"^middle_block\.(\d+)\.(.*)$")


def _resnet_part(rest: str, target: str, j: int) -> str:
    """Key inside an original ResBlock (``rest`` after the part index) -> diffusers key."""
    if rest.startswith("temopral_conv."):
        return f"{target}.temp_convs.{j}.{rest[len('temopral_conv.'):]}"
    for old, new in _RESNET_RENAMES:
        if rest.startswith(old):
            return f"{target}.resnets.{j}.{new}{rest[len(old):]}"
    raise KeyError(rest)


def original_block_structure(keys: Iterable[str]) -> Tuple[int, int]:
    """(levels, layers_per_block) of an original-layout state dict, from where the ``op`` downsamplers sit."""
    inputs: Dict[int, set] = {}
    for k in keys:
        m = _BLOCK_RE.match(k)
        if m and m.group(1) == "input_blocks":
            inputs.setdefault(int(m.group(2)), set()).add(m.group(4) if m.group(3) is None else m.group(3))
    if not inputs:
        raise CheckpointError("original-layout checkpoint has no input_blocks")
    ops = sorted(i for i, parts in inputs.items() if any(p.startswith("op.") for p in parts))
    count = max(inputs) + 1
    stride = ops[0] if ops else count  # = layers_per_block + 1
    if stride < 2 or count % stride or ops != [stride * (i + 1) for i in range(len(ops))]:
        raise CheckpointError(f"original-layout input_blocks are not arranged as levels of equal depth "
                              f"(downsamplers at {ops}, {count} blocks)")
    return count // stride, stride - 1


def original_to_diffusers(sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Rename (and for temporal Conv1d projections, reshape) an original ModelScope state dict to diffusers names.

    Tensors are not copied: renamed entries share memory with ``sd``; the Conv1d weights become views.
    """
    levels, n = original_block_structure(sd)
    stride = n + 1
    out: Dict[str, torch.Tensor] = {}
    unknown: List[str] = []
    for key, tensor in sd.items():
        try:
            new = map_original_key(key, stride, levels)
        except KeyError:
            unknown.append(key)
            continue
        out[new] = _squeeze_projection(new, tensor)
    if unknown:
        shown = ", ".join(f"{k} {tuple(sd[k].shape)}" for k in unknown[:8])
        raise CheckpointError(f"{source}: {len(unknown)} keys of the original ModelScope layout have no diffusers "
                              f"equivalent (first: {shown}). Is this a variant of UNetSD this loader does not know?")
    return out


def map_original_key(key: str, stride: int, levels: int) -> str:
    for old, new in (("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
                     ("input_blocks.0.0.", "conv_in."), ("input_blocks.0.1.", "transformer_in."),
                     ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")):
        if key.startswith(old):
            return new + key[len(old):]
    m = _MIDDLE_RE.match(key)
    if m:
        part, rest = int(m.group(1)), m.group(2)
        if part in (0, 3):
            return _resnet_part(rest, "mid_block", part // 3)
        return _attention_or_resnet("mid_block", part, 0, rest, key)
    m = _BLOCK_RE.match(key)
    if not m:
        raise KeyError(key)
    group, index, part, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    if group == "input_blocks" and part is None and rest.startswith("op.") and index % stride == 0:
        return f"down_blocks.{index // stride - 1}.downsamplers.0.conv.{rest[3:]}"
    if part is None:
        raise KeyError(key)
    part = int(part)
    if group == "input_blocks":
        level, j = divmod(index - 1, stride)
        return _attention_or_resnet(f"down_blocks.{level}", part, j, rest, key)
    level, j = divmod(index, stride)
    if level >= levels:
        raise KeyError(key)
    if part >= 1 and rest.startswith("conv."):  # Upsample: part 1 on levels without attention, else part 3
        return f"up_blocks.{level}.upsamplers.0.conv.{rest[5:]}"
    return _attention_or_resnet(f"up_blocks.{level}", part, j, rest, key)


def _attention_or_resnet(target: str, part: int, j: int, rest: str, key: str) -> str:
    if part == 0:
        return _resnet_part(rest, target, j)
    if part == 1:
        return f"{target}.attentions.{j}.{rest}"
    if part == 2:
        return f"{target}.temp_attentions.{j}.{rest}"
    raise KeyError(key)


def _squeeze_projection(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Conv1d (out, in, 1) projections of temporal transformers become Linear (out, in) weights. A 1x1
    Conv2d projection is equivalent too, so (out, in, 1, 1) is accepted the same way."""
    projection = name.endswith(("proj_in.weight", "proj_out.weight"))
    if projection and tensor.ndim > 2 and all(s == 1 for s in tensor.shape[2:]):
        return tensor.reshape(tensor.shape[0], tensor.shape[1])
    return tensor
