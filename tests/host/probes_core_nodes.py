"""Functions run INSIDE the ComfyUI host process (``HostProcess.call``) for the core-node tests: ComfyUI's transformer
patch protocol and attention override on the UNet3D model. ``host`` is comfy_runner.worker.Host. Plain JSON out."""
import torch

SAMPLER, LOADER, POS, NEG, LATENT = "7", "1", "4", "5", "6"


def _first(raw):
    return raw[0][0] if isinstance(raw[0], list) else raw[0]


def _node(host, name):
    return host.nodes.NODE_CLASS_MAPPINGS[name]()


def _prepare(host, prompt):
    """Run the prompt once (loads and caches everything) and return (patcher, positive, negative, latent)."""
    answer = host.run(prompt)
    if not answer["ok"]:
        raise RuntimeError(f"prompt failed: {answer.get('error')}")
    return (_first(host.raw_output(LOADER)), _first(host.raw_output(POS)), _first(host.raw_output(NEG)),
            _first(host.raw_output(LATENT)))


def _sample(host, patcher, positive, negative, latent, seed=3, steps=2, cfg=7.0):
    out = host.nodes.common_ksampler(patcher, seed, steps, cfg, "euler", "normal", positive, negative, latent)
    return _first(out)["samples"]


def _count_model_calls(patcher):
    calls = []
    handle = patcher.model.diffusion_model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    return calls, handle


def transformer_patches_seen(host, prompt):
    """What ComfyUI's transformer patches see on the UNet3D: an ``attn1_patch`` and ``attn2_output_patch`` that
    record their ``extra_options`` and change nothing, and ``patches_replace`` entries for a spatial and a temporal
    block that compute plain attention. Returns the records and whether the output equals the unpatched one."""
    from comfy.ldm.modules.attention import optimized_attention
    patcher, positive, negative, latent = _prepare(host, prompt)
    base = _sample(host, patcher, positive, negative, latent)
    seen = {"attn1_patch": [], "attn2_output_patch": [], "replaced": []}

    def attn1(q, k, v, extra):
        seen["attn1_patch"].append({
            "block": list(extra["block"]), "block_index": extra["block_index"], "n_heads": extra["n_heads"],
            "dim_head": extra["dim_head"], "original_shape": list(extra["original_shape"]),
            "activations_shape": list(extra["activations_shape"]), "tokens": q.shape[1],
            "cond_or_uncond": list(extra["cond_or_uncond"]), "has_sigmas": "sigmas" in extra,
            "transformer_index": extra.get("transformer_index")})
        return q, k, v

    def attn2_out(out, extra):
        seen["attn2_output_patch"].append(list(extra["block"]))
        return out

    def replacement(name):
        def attend(q, k, v, extra):
            seen["replaced"].append({"name": name, "block": list(extra["block"]), "tokens": q.shape[1]})
            return optimized_attention(q, k, v, extra["n_heads"])
        return attend
    clone = patcher.clone()
    clone.set_model_attn1_patch(attn1)
    clone.set_model_attn2_output_patch(attn2_out)
    clone.set_model_attn1_replace(replacement("spatial"), "output", 5, 0)
    clone.set_model_attn2_replace(replacement("temporal"), "temporal_middle", 0)
    patched = _sample(host, clone, positive, negative, latent)
    return {**seen, "rel": float((patched - base).abs().max() / base.abs().max()),
            "rows": int(latent["samples"].shape[0])}


def attention_override_calls(host, prompt):
    """An ``optimized_attention_override`` that counts its calls and runs the kernel it is given: every attention
    layer, spatial and temporal, must go through it, and the output must equal the run without it."""
    patcher, positive, negative, latent = _prepare(host, prompt)
    base = _sample(host, patcher, positive, negative, latent)
    counted = []

    def override(kernel, q, k, v, heads, *args, **kwargs):
        counted.append(q.shape[1])
        return kernel(q, k, v, heads, *args, **kwargs)
    clone = patcher.clone()
    clone.model_options["transformer_options"]["optimized_attention_override"] = override
    calls, handle = _count_model_calls(clone)
    try:
        out = _sample(host, clone, positive, negative, latent)
    finally:
        handle.remove()
    layers = len(patcher.model.diffusion_model.attn_processors)
    return {"override_calls": len(counted), "model_calls": len(calls), "layers": layers,
            "equal": bool(torch.equal(out, base))}
