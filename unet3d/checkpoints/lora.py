"""LoRA for UNet3D: read the published key layouts, map them onto the model's (diffusers) weight names, compute
the weight deltas, and merge / unmerge them on the pure model.

A LoRA stores, per adapted layer, ``down`` (rank x in) and ``up`` (out x rank) factors and optionally an ``alpha``;
the layer's weight becomes ``W + strength * alpha / rank * (up @ down)`` (``alpha`` absent: factor 1). Convolution
factors are flattened to matrices and the product is reshaped to the weight's shape.

Layouts understood (module names in diffusers form, e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``,
or in the original ModelScope form, ``input_blocks.1.1.transformer_blocks.0.attn1.to_q``; optional prefixes such as
``unet.``, ``base_model.model.``, ``diffusion_model.``):

- diffusers / PEFT: ``<module>.lora_A.weight`` (down) / ``<module>.lora_B.weight`` (up)
- diffusers attention processors: ``<attention>.processor.to_q_lora.down.weight`` / ``.up.weight`` (to_out -> to_out.0)
- kohya-style: ``lora_unet_<module with _ for .>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``, also with
  dotted module names; ``.lora_layer.down/up`` and ``.lora_linear_layer.down/up`` (older diffusers) too
- Text-To-Video-Finetuning ``stable_lora`` (loralib parameters): ``<module>.lora_A`` / ``<module>.lora_B`` without
  ``.weight``, in diffusers names (its ``full_weights/`` file) or ModelScope names (the file it saves for the webui
  text2video extension). Its conv factors are ``(out*k, r*k) @ (r*k, in*k)``; for the temporal ``Conv3d`` (weight
  ``(out, in, k, 1, 1)``) the product is viewed as ``(out, in, k, k, 1)`` and averaged over the 4th axis, as its
  layer does at run time.

Text-encoder entries (``lora_te_*``, ``text_model.*``, ``resblocks.*``...) are skipped: this is the UNet's LoRA.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..errors import LoraError, SettingError
from .layouts import map_original_key, unwrap

log = logging.getLogger("unet3d")

SUPPORTED_LAYOUTS = (
    "diffusers/PEFT '<module>.lora_A.weight' + '.lora_B.weight'",
    "diffusers attention processors '<attn>.processor.to_q_lora.down.weight' + '.up.weight'",
    "kohya-style 'lora_unet_<module>.lora_down.weight' + '.lora_up.weight' (+ '.alpha')",
    "Text-To-Video-Finetuning stable_lora '<module>.lora_A' + '.lora_B' (diffusers or ModelScope module names)",
)
_PREFIXES = ("unet.base_model.model.", "base_model.model.", "model.diffusion_model.", "diffusion_model.", "unet.",
             "lora_unet_")
_TEXT_PREFIXES = ("lora_te", "text_encoder.", "text_model.", "te.", "transformer.", "resblocks.",
                  "cond_stage_model.", "clip_", "lora_clip")
# (regex on the key without prefix, role, layout); group "m" is the module name.
_ROLE_PATTERNS = (
    (re.compile(r"^(?P<m>.+)\.processor\.(?P<p>to_q|to_k|to_v|to_out)_lora\.(?P<r>down|up)\.weight$"), "attn-procs"),
    (re.compile(r"^(?P<m>.+)\.lora_(?P<r>A|B)\.weight$"), "diffusers/PEFT"),
    (re.compile(r"^(?P<m>.+)\.lora_(?P<r>down|up)\.weight$"), "kohya"),
    (re.compile(r"^(?P<m>.+)\.lora_(?:linear_)?layer\.(?P<r>down|up)\.weight$"), "diffusers (lora_layer)"),
    (re.compile(r"^(?P<m>.+)\.lora_(?P<r>A|B)$"), "stable_lora"),
    (re.compile(r"^(?P<m>.+)\.(?P<r>alpha)$"), None),
)
_UNSUPPORTED = (
    (re.compile(r"\.(hada_w\d_[ab]|hada_t\d)$"), "LoHa"),
    (re.compile(r"\.(lokr_w\d(_[ab])?|lokr_t\d)$"), "LoKr"),
    (re.compile(r"\.lora_mid\.weight$"), "LoCon with a mid (Tucker) factor"),
    (re.compile(r"\.dora_scale$"), "DoRA"),
    (re.compile(r"\.(diff|diff_b)$"), "full weight differences (LyCORIS 'diff')"),
    (re.compile(r"\.bias$"), "trained biases (stable_lora lora_bias='all'/'lora_only')"),
)
_ROLE = {"A": "down", "B": "up", "down": "down", "up": "up", "alpha": "alpha"}
STRENGTH_LIMIT = 10.0   # |strength|; far past any useful value, and it keeps weights finite


@dataclass(frozen=True)
class LoraPair:
    """One adapted weight: ``base_key`` is the model's parameter name (diffusers form, ending in ``.weight``)."""

    base_key: str
    up: torch.Tensor
    down: torch.Tensor
    alpha: Optional[float] = None
    source: str = ""

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank


@dataclass
class ParsedLora:
    pairs: Dict[str, LoraPair]
    layouts: List[str]
    skipped_text_keys: List[str] = field(default_factory=list)
    unmatched: List[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------- reading
def read_lora(lora, source: Optional[str] = None) -> Tuple[Dict[str, torch.Tensor], str]:
    """(tensor dict, name for messages) from a path (safetensors / weights-only pickle) or an already loaded object."""
    if isinstance(lora, (str, Path)):
        from .safe_io import read_weight_file
        obj, source = read_weight_file(lora), source or str(lora)
    else:
        obj, source = lora, source or "LoRA state dict"
    if isinstance(obj, (list, tuple)):
        raise LoraError(f"{source} holds a list of {len(obj)} unnamed tensors (cloneofsimo's '.pt' LoRA format), which "
                        f"cannot be mapped to layers without the trainer's model code. Save the LoRA with "
                        f"Text-To-Video-Finetuning's lora_version 'stable_lora' (a .safetensors file with names).")
    return unwrap(obj, source), source


def _is_text_key(key: str) -> bool:
    return key.startswith(_TEXT_PREFIXES)


def _strip(key: str) -> Tuple[str, bool]:
    """Key without wrapper prefixes; True when the kohya ``lora_unet_`` prefix (underscored names) was removed."""
    underscored = False
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
                underscored = underscored or prefix == "lora_unet_"
    return key, underscored


def _split_key(key: str) -> Optional[Tuple[str, str, Optional[str]]]:
    """(module name, role 'down'|'up'|'alpha', layout) or None when the key is no LoRA entry we know."""
    for pattern, layout in _ROLE_PATTERNS:
        m = pattern.match(key)
        if not m:
            continue
        module = m.group("m")
        if layout == "attn-procs":
            module = f"{module}.{m.group('p')}" + (".0" if m.group("p") == "to_out" else "")
        return module, _ROLE[m.group("r")], layout
    return None


class _Resolver:
    """Module name (diffusers, ModelScope, or underscored) -> the model's weight key, or None."""

    def __init__(self, base_shapes: Mapping[str, Sequence[int]], layers_per_block: int, levels: int):
        self.keys = {k for k in base_shapes if k.endswith(".weight")}
        self.underscored = {k[:-len(".weight")].replace(".", "_"): k for k in self.keys}
        self.stride, self.levels = layers_per_block + 1, levels

    def __call__(self, module: str, underscored: bool) -> Optional[str]:
        if not underscored and f"{module}.weight" in self.keys:
            return f"{module}.weight"
        if not underscored:
            try:
                mapped = map_original_key(f"{module}.weight", self.stride, self.levels)
            except (KeyError, ValueError):
                mapped = None
            if mapped in self.keys:
                return mapped
        return self.underscored.get(module.replace(".", "_"))


def _describe(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def parse_lora(sd: Mapping[str, torch.Tensor], base_shapes: Mapping[str, Sequence[int]], layers_per_block: int,
               levels: int, source: str = "LoRA") -> ParsedLora:
    """Group ``sd``'s entries per adapted weight of a model whose parameters have ``base_shapes``.

    Raises LoraError for unknown or unsupported key layouts, a factor without its partner, and a LoRA that matches
    no weight of the model. Module names that match nothing while others match are reported in ``unmatched``.
    """
    resolve = _Resolver(base_shapes, layers_per_block, levels)
    parts: Dict[str, Dict[str, object]] = {}
    layouts, skipped, unknown, unsupported, unmatched = set(), [], [], {}, []
    for key, tensor in sd.items():
        if _is_text_key(key):
            skipped.append(key)
            continue
        stripped, underscored = _strip(key)
        split = _split_key(stripped)
        if split is None:
            kind = next((name for rx, name in _UNSUPPORTED if rx.search(stripped)), None)
            (unsupported.setdefault(kind, []) if kind else unknown).append(key)
            continue
        module, role, layout = split
        base = resolve(module, underscored)
        if base is None:
            if role != "alpha":
                unmatched.append(key)
            continue
        if layout:
            layouts.add(layout)
        entry = parts.setdefault(base, {"source": module, "keys": {}})
        if role in entry:
            raise LoraError(f"{source}: two entries give the {role} factor of weight {base} (second: {key}); the "
                            f"file mixes layouts or holds two LoRAs. Save one LoRA per file.")
        entry[role] = tensor
        entry["keys"][role] = key
    if unsupported:
        kinds = "; ".join(f"{kind} (e.g. {_describe(keys, 2)})" for kind, keys in unsupported.items())
        raise LoraError(f"{source} uses LoRA variants this UNet3D loader does not apply: {kinds}. Supported: "
                        f"{'; '.join(SUPPORTED_LAYOUTS)}.")
    if unknown:
        raise LoraError(f"{source}: {len(unknown)} keys are in no LoRA layout this loader knows (first: "
                        f"{_describe(unknown)}). Supported layouts: {'; '.join(SUPPORTED_LAYOUTS)}. A cloneofsimo "
                        f"'.pt' list of unnamed tensors cannot be mapped; re-save it with Text-To-Video-Finetuning's "
                        f"stable_lora.")
    pairs = {}
    for base, entry in parts.items():
        missing = [r for r in ("up", "down") if r not in entry]
        if missing:
            if set(entry) == {"source", "keys", "alpha"}:
                continue  # an alpha whose factors are absent: nothing to apply
            raise LoraError(f"{source}: weight {base} (LoRA module {entry['source']}) has no {missing[0]} factor; "
                            f"the file is incomplete or mixes layouts.")
        pairs[base] = _checked_pair(base, entry, base_shapes[base], source)
    if not pairs:
        sample = unmatched or list(sd)
        raise LoraError(f"{source} matches no weight of this UNet3D (LoRA keys, first: {_describe(sample)}). It is "
                        f"probably a LoRA for another model (an image UNet, a text encoder only) or for a UNet3D of "
                        f"another size. Supported layouts: {'; '.join(SUPPORTED_LAYOUTS)}.")
    _check_finite(pairs, parts, source)
    return ParsedLora(pairs, sorted(layouts), skipped, unmatched)


def _checked_pair(base: str, entry: Dict[str, object], shape: Sequence[int], source: str) -> LoraPair:
    """The pair of one weight, its factors checked (floating matrices or conv kernels, rank >= 1, a single finite
    alpha, shapes that form the weight) so that applying it cannot fail or divide by zero."""
    keys = entry["keys"]
    for role in ("up", "down"):
        factor = entry[role]
        if not factor.is_floating_point() or factor.ndim < 2 or factor.shape[0] == 0:
            raise LoraError(f"{source}: {keys[role]} is a {tuple(factor.shape)} {factor.dtype} tensor; a LoRA factor "
                            f"is a floating-point matrix (or conv kernel) of rank >= 1. The file is damaged or not a "
                            f"LoRA.")
    alpha = entry.get("alpha")
    if alpha is not None:
        if alpha.numel() != 1 or not math.isfinite(float(alpha.reshape(()).float())):
            raise LoraError(f"{source}: {keys['alpha']} should be one finite number, found a {tuple(alpha.shape)} "
                            f"tensor{'' if alpha.numel() != 1 else ' holding ' + str(alpha.item())}. The file is "
                            f"damaged.")
        alpha = float(alpha.reshape(()).float())
    pair = LoraPair(base, entry["up"], entry["down"], alpha, str(entry["source"]))
    _product_rule(pair, shape, source)
    return pair


def _check_finite(pairs: Mapping[str, LoraPair], parts: Mapping[str, Dict[str, object]], source: str) -> None:
    """NaN or infinity in a factor would turn every sampled frame into NaN without a word: refuse, naming keys."""
    bad = [parts[base]["keys"][role] for base, pair in pairs.items() for role in ("up", "down")
           if not getattr(pair, role).is_meta and not bool(torch.isfinite(getattr(pair, role)).all())]
    if bad:
        raise LoraError(f"{source}: {len(bad)} LoRA factors hold NaN or infinite values (first: {_describe(bad)}). "
                        f"The file is damaged or its training diverged; use another save of this LoRA.")


def check_strength(strength) -> float:
    """``strength`` as a float; SettingError unless it is a finite number within +-STRENGTH_LIMIT."""
    number = strength if isinstance(strength, (int, float)) and not isinstance(strength, bool) else None
    if number is None or not math.isfinite(number) or abs(number) > STRENGTH_LIMIT:
        raise SettingError(f"LoRA strength must be a finite number from {-STRENGTH_LIMIT} to {STRENGTH_LIMIT} (0: no "
                           f"effect, negative: inverted), got {strength!r}")
    return float(number)


# ----------------------------------------------------------------------------------------------------- maths
def _product_rule(pair: LoraPair, shape: Sequence[int], source: str = "LoRA") -> str:
    """How ``up @ down`` becomes a delta of ``shape``: 'reshape', or 'mean' for stable_lora's Conv3d. Raises
    LoraError when the factors cannot form that shape (checked before any weight is touched)."""
    up_rows, up_cols = pair.up.shape[0], math.prod(pair.up.shape[1:])
    down_rows, down_cols = pair.down.shape[0], math.prod(pair.down.shape[1:])
    if up_cols != down_rows:
        raise LoraError(f"{source}: the factors of {pair.base_key} do not chain: up {tuple(pair.up.shape)}, down "
                        f"{tuple(pair.down.shape)} (up's columns must equal down's rows, the rank)")
    shape, numel = tuple(shape), up_rows * down_cols
    if numel == math.prod(shape):
        return "reshape"
    if len(shape) == 5 and shape[3:] == (1, 1) and numel == math.prod(shape) * shape[2]:
        return "mean"
    raise LoraError(f"{source}: the LoRA for {pair.base_key} (module {pair.source}) has up {tuple(pair.up.shape)} x "
                    f"down {tuple(pair.down.shape)}, which cannot form the weight's shape {shape}: the LoRA was made "
                    f"for a model of another size.")


def lora_delta(pair: LoraPair, shape: Sequence[int], strength: float = 1.0) -> torch.Tensor:
    """``strength * scale * up @ down`` in float32, shaped like the weight (see the module doc for conv factors)."""
    rule = _product_rule(pair, shape)
    product = pair.up.float().flatten(1) @ pair.down.float().flatten(1)
    shape = tuple(shape)
    if rule == "mean":  # stable_lora Conv3d (out, in, k, 1, 1): average over the extra kernel axis
        out, inp, k = shape[:3]
        product = product.reshape(out, inp, k, k, 1).mean(dim=-2, keepdim=True)
    else:
        product = product.reshape(shape)
    return product * (strength * pair.scale)


def needs_dense_delta(pair: LoraPair, shape: Sequence[int]) -> bool:
    """True when the delta is not ``(up @ down).reshape(shape)`` (stable_lora's Conv3d): hosts that apply LoRAs as
    up/down factors must be handed the dense delta instead."""
    return _product_rule(pair, shape) != "reshape"


def canonical_lora(parsed: ParsedLora, base_shapes: Mapping[str, Sequence[int]]) -> Dict[str, torch.Tensor]:
    """The LoRA as ``<module>.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha`` entries keyed by the model's own
    module names (``<module>.diff`` holds a dense delta where factors cannot express it): the kohya-style layout that
    LoRA appliers in other tools read."""
    out: Dict[str, torch.Tensor] = {}
    for base, pair in parsed.pairs.items():
        name = base[:-len(".weight")]
        if needs_dense_delta(pair, base_shapes[base]):
            out[f"{name}.diff"] = lora_delta(pair, base_shapes[base])
            continue
        out[f"{name}.lora_up.weight"] = pair.up
        out[f"{name}.lora_down.weight"] = pair.down
        if pair.alpha is not None:
            out[f"{name}.alpha"] = torch.tensor(pair.alpha)
    return out


# ----------------------------------------------------------------------------------------------------- pure model
def _geometry(model: torch.nn.Module) -> Tuple[int, int]:
    config = model.config
    return config["layers_per_block"], len(config["block_out_channels"])


def parse_for_model(model: torch.nn.Module, lora, source: Optional[str] = None) -> ParsedLora:
    sd, name = read_lora(lora)
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    return parse_lora(sd, shapes, *_geometry(model), source=source or name)


def merge_lora(model: torch.nn.Module, lora, strength: float = 1.0) -> List[str]:
    """Add the LoRA's deltas to ``model``'s weights in place, remembering each weight's original the first time it
    is touched (so ``unmerge_lora`` restores it bit for bit, also after several LoRAs). Returns the changed keys."""
    strength = check_strength(strength)
    parsed = parse_for_model(model, lora)  # every factor and shape checked before the first weight changes
    params = dict(model.named_parameters())
    if parsed.unmatched:
        log.warning("LoRA: %d entries match no weight of this UNet3D and were ignored (first: %s)",
                    len(parsed.unmatched), _describe(parsed.unmatched, 3))
    if strength == 0:
        return sorted(parsed.pairs)
    originals: Dict[str, torch.Tensor] = model.__dict__.setdefault("_lora_originals", {})
    with torch.no_grad():
        for key, pair in parsed.pairs.items():
            param = params[key]
            delta = lora_delta(pair, param.shape, strength)
            if key not in originals:
                originals[key] = param.detach().clone()
            param.copy_((param.float() + delta.to(param.device)).to(param.dtype))
    return sorted(parsed.pairs)


def unmerge_lora(model: torch.nn.Module) -> None:
    """Put back every weight changed by ``merge_lora`` (no-op when none was)."""
    originals: Dict[str, torch.Tensor] = model.__dict__.pop("_lora_originals", {})
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, original in originals.items():
            params[key].copy_(original)
