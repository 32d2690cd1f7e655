"""ComfyUI's patch protocol, translated into unet3d's neutral per-call options and hooks (the only place it is read).

ComfyUI hands every model call a ``transformer_options`` dict: the patch lists and replacements set by patch nodes,
the sampler's bookkeeping (``cond_or_uncond``, ``sigmas``...) and this pack's own settings under
``transformer_options["unet3d"]`` (written by the patch nodes in ``nodes/patches.py``). ``call_options`` turns that
into ``unet3d.network.options.CallOptions``: the settings, the attention kernel, and ``ComfyPatchHooks``.

Block names (how a patch written for ComfyUI's SD UNet addresses UNet3D's layers):

* The spatial transformers are ``("input", i)``, ``("middle", 0)`` and ``("output", i)``, where ``i`` numbers the
  layers as the original ModelScope checkpoint's ``input_blocks`` / ``output_blocks`` do, which is the SD1.5
  numbering (input 1, 2, 4, 5, 7, 8; output 3-11 for the published 4-level models). Each holds one transformer
  block (index 0). The global lists ``attn1_patch``, ``attn2_patch``, ``attn1_output_patch``,
  ``attn2_output_patch`` and ``middle_patch`` apply to these only: they assume tokens that are pixels of a frame.
* The temporal transformers are ``("temporal_input", i)``, ``("temporal_middle", 0)``, ``("temporal_output", i)``
  with the same ``i`` (``transformer_in`` is ``("temporal_input", 0)``); only ``patches_replace["attn1"/"attn2"]``
  entries with these names reach them (their tokens are the frames of one pixel).
* ``input_block_patch`` / ``input_block_patch_after_skip`` run on each encoder skip ``("input", i)``,
  ``output_block_patch`` before each decoder concatenation ``("output", i)``, as in ComfyUI's UNet.
* ``optimized_attention_override`` (ComfyUI 0.3.60 on) is called for every attention, spatial and temporal.

Patches get ComfyUI's ``extra_options``: the call's ``transformer_options`` without the patch lists, plus ``block``,
``block_index``, ``n_heads``, ``dim_head``, ``attn_precision``, ``original_shape`` (the latent rows given to the
model), ``activations_shape`` (the transformer's input) and ``transformer_index``. Imports nothing from ComfyUI.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from ..unet3d.network.hooks import MIDDLE, NO_HOOKS, SPATIAL, LayerSite, UNetHooks
from ..unet3d.network.options import CallOptions, parse_call_options
from .step_cache_plan import step_cache_plan

OUR_KEY = "unet3d"                  # this pack's settings inside transformer_options
OUR_SETTINGS = ("attention_slice", "ff_chunk", "freeu", "step_cache")
BLOCK_PATCHES = ("input_block_patch", "input_block_patch_after_skip", "output_block_patch")
ATTENTION_PATCHES = ("attn1_patch", "attn2_patch", "attn1_output_patch", "attn2_output_patch", "middle_patch")


def block_name(site: LayerSite) -> tuple:
    """ComfyUI's ``(block, index)`` for a transformer (see the module docstring)."""
    stage = site.stage if site.kind == SPATIAL else f"temporal_{site.stage}"
    return (stage, 0 if site.stage == MIDDLE else site.index)


class ComfyPatchHooks(UNetHooks):
    """ComfyUI's block patches at UNet3D's skips and concatenations, and its transformer patches around UNet3D's
    attentions. Patches get a copy of the call's ``transformer_options`` (the caller's dict is never written)."""

    def __init__(self, transformer_options: Mapping[str, Any], original_shape):
        patches = transformer_options.get("patches") or {}
        self.patches = {key: list(patches.get(key) or []) for key in BLOCK_PATCHES + ATTENTION_PATCHES}
        self.replace = {which: dict((transformer_options.get("patches_replace") or {}).get(f"attn{which}") or {})
                        for which in (1, 2)}
        self.wants_attention = any(self.patches[k] for k in ATTENTION_PATCHES) or any(self.replace.values())
        self.options = {k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")}
        self.options["original_shape"] = list(original_shape)
        self.options["transformer_index"] = 0
        self.block_options = dict(transformer_options)

    # -- encoder skips and decoder concatenations
    def encoder_skip(self, h, index):
        if self.patches["input_block_patch"] or self.patches["input_block_patch_after_skip"]:
            self.block_options["block"] = ("input", index)
        for patch in self.patches["input_block_patch"]:
            h = patch(h, self.block_options)
        skip = h
        for patch in self.patches["input_block_patch_after_skip"]:
            h = patch(h, self.block_options)
        return skip, h

    def decoder_concat(self, h, skip, index):
        if self.patches["output_block_patch"]:
            self.block_options["block"] = ("output", index)
        for patch in self.patches["output_block_patch"]:
            h, skip = patch(h, skip, self.block_options)
        return h, skip

    # -- transformers
    def extra_options(self, site: LayerSite, layer, feature_shape) -> dict:
        extra = dict(self.options)
        extra.update(block=block_name(site), block_index=0, n_heads=layer.heads, dim_head=layer.dim_head,
                     attn_precision=None, activations_shape=list(feature_shape))
        return extra

    def attention(self, site, which, layer, hidden, context, run, feature_shape):
        spatial = site.kind == SPATIAL
        out = self._attend(site, which, layer, hidden, context, run, feature_shape)
        if spatial and which == 2:
            self.options["transformer_index"] += 1        # as ComfyUI counts its spatial transformers
        return out

    def _attend(self, site, which, layer, hidden, context, run, feature_shape):
        spatial = site.kind == SPATIAL
        block = block_name(site)
        replace = self.replace[which].get((*block, 0), self.replace[which].get(block))
        patches = self.patches[f"attn{which}_patch"] if spatial else ()
        outputs = self.patches[f"attn{which}_output_patch"] if spatial else ()
        if not (replace or patches or outputs):
            return run(hidden, context, None)
        extra = self.extra_options(site, layer, feature_shape)
        value = None
        if patches:
            context = hidden if context is None else context    # as ComfyUI: patches see keys and values
            value = context
            for patch in patches:
                hidden, context, value = patch(hidden, context, value, extra)
        if replace is not None:
            keys = hidden if context is None else context
            values = keys if value is None else value
            out = layer.project_out(replace(layer.to_q(hidden), layer.to_k(keys), layer.to_v(values), extra))
        else:
            out = run(hidden, context, value)
        for patch in outputs:
            out = patch(out, extra)
        return out

    def between_attentions(self, site, x):
        if site.kind != SPATIAL or not self.patches["middle_patch"]:
            return x
        extra = dict(self.options, block=block_name(site), block_index=0)
        for patch in self.patches["middle_patch"]:
            x = patch(x, extra)
        return x


def wants_hooks(transformer_options: Mapping[str, Any]) -> bool:
    patches = transformer_options.get("patches") or {}
    replaced = transformer_options.get("patches_replace") or {}
    return any(patches.get(k) for k in BLOCK_PATCHES + ATTENTION_PATCHES) or any(
        replaced.get(k) for k in ("attn1", "attn2"))


def attention_kernel(transformer_options: Mapping[str, Any], default: Callable) -> Callable:
    """The call's attention function: ``default``, or ComfyUI's ``optimized_attention_override`` wrapped around the
    host's kernel (called as ComfyUI calls it: ``override(kernel, q, k, v, heads, transformer_options=...)``)."""
    override = transformer_options.get("optimized_attention_override")
    if override is None:
        return default

    def kernel(q, k, v, heads, mask=None, **_ignored):
        return default(q, k, v, heads) if mask is None else default(q, k, v, heads, mask)

    def attend(q, k, v, heads, mask=None):
        extra = {"mask": mask} if mask is not None else {}
        return override(kernel, q, k, v, heads, transformer_options=transformer_options, **extra)
    return attend


def call_options(transformer_options: Optional[Mapping[str, Any]], default_attention: Optional[Callable] = None,
                 original_shape=()) -> CallOptions:
    """The unet3d per-call options for one ComfyUI model call on latent rows of ``original_shape``."""
    transformer_options = transformer_options or {}
    ours = transformer_options.get(OUR_KEY) or {}
    unknown = sorted(set(ours) - set(OUR_SETTINGS))
    if unknown:
        raise ValueError(f"transformer_options[{OUR_KEY!r}] has unknown keys {unknown}; valid: "
                         f"{', '.join(OUR_SETTINGS)}")
    settings = {key: ours[key] for key in OUR_SETTINGS if key in ours}
    if settings.get("step_cache") is not None:
        settings["step_cache"] = step_cache_plan(settings["step_cache"], transformer_options)
    hooks = ComfyPatchHooks(transformer_options, original_shape) if wants_hooks(transformer_options) else NO_HOOKS
    attention = attention_kernel(transformer_options, default_attention) if default_attention else None
    return parse_call_options({**settings, "attention_fn": attention, "hooks": hooks})
