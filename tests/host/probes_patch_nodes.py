"""Functions run INSIDE the ComfyUI host process (``HostProcess.call``) for the patch-node and LoRA tests.
``host`` is comfy_runner.worker.Host. They return plain JSON data."""
import copy
import os

import torch


def _node(host, name):
    return host.nodes.NODE_CLASS_MAPPINGS[name]()


def _load(host, unet_name):
    return _node(host, "UNet3DLoader").load(unet_name)[0]


def _inputs(frames=4, size=16, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(frames, 4, size, size, generator=gen), torch.randn(1, 7, 1024, generator=gen))


def _unet_forward(patcher, x, context, t=400):
    """The UNet as the sampler calls it, with the clone's transformer_options (one video, one cond chunk)."""
    options = dict(patcher.model_options["transformer_options"])
    options["cond_or_uncond"] = [0]
    timesteps = torch.full((x.shape[0],), float(t))
    return patcher.model.diffusion_model(x, timesteps=timesteps, context=context, transformer_options=options)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def freeu_diffusers_mode_vs_diffusers(host, unet_name, values):
    """UNet3DFreeU(mode=diffusers) against diffusers' UNet3DConditionModel.enable_freeu on the same weights."""
    from diffusers import UNet3DConditionModel as Reference
    base = _load(host, unet_name)
    patched = _node(host, "UNet3DFreeU").patch(base, mode="diffusers", **values)[0]
    unet = base.model.diffusion_model
    reference = Reference(**{k: v for k, v in dict(unet.config).items() if not k.startswith("_")}).eval()
    reference.load_state_dict(unet.state_dict())
    x, context = _inputs()
    with torch.no_grad():
        plain = _unet_forward(base, x, context)
        ours = _unet_forward(patched, x, context)
        reference.enable_freeu(**values)
        want = reference(x.transpose(0, 1)[None], 400, context).sample[0].transpose(0, 1)
        reference.disable_freeu()
        want_plain = reference(x.transpose(0, 1)[None], 400, context).sample[0].transpose(0, 1)
    return {"rel_freeu": _rel(ours, want), "rel_plain": _rel(plain, want_plain), "effect": _rel(ours, plain),
            "base_options_untouched": "unet3d" not in base.model_options["transformer_options"]}


def stacking(host, unet_name):
    """Every order of the three option nodes ends with all three options; repeating a kind keeps the later one;
    no node changes its input's model_options."""
    import itertools
    base = _load(host, unet_name)
    before = copy.deepcopy(base.model_options)
    steps = {"freeu": lambda m: _node(host, "UNet3DFreeU").patch(m, 1.2, 1.4, 0.9, 0.2, "diffusers")[0],
             "slice": lambda m: _node(host, "UNet3DAttentionSlicing").patch(m, "max")[0],
             "chunk": lambda m: _node(host, "UNet3DForwardChunking").patch(m, 2, "batch")[0]}
    orders = {}
    for order in itertools.permutations(steps):
        m, seen = base, []
        for name in order:
            parent_options = copy.deepcopy(m.model_options["transformer_options"].get("unet3d"))
            child = steps[name](m)
            seen.append(parent_options == m.model_options["transformer_options"].get("unet3d"))
            m = child
        ours = m.model_options["transformer_options"]["unet3d"]
        orders["-".join(order)] = {"keys": sorted(ours), "parents_untouched": all(seen)}
    m = _node(host, "UNet3DAttentionSlicing").patch(base, "max")[0]
    m = _node(host, "UNet3DAttentionSlicing").patch(m, "2")[0]
    m = _node(host, "UNet3DForwardChunking").patch(m, 4, "sequence")[0]
    m = _node(host, "UNet3DForwardChunking").patch(m, 1, "batch")[0]
    comfy_then_diffusers = _node(host, "UNet3DFreeU").patch(
        _node(host, "UNet3DFreeU").patch(base, 1.1, 1.2, 0.9, 0.2, "comfy")[0], 1.2, 1.4, 0.9, 0.2, "diffusers")[0]
    diffusers_then_comfy = _node(host, "UNet3DFreeU").patch(
        _node(host, "UNet3DFreeU").patch(base, 1.2, 1.4, 0.9, 0.2, "diffusers")[0], 1.1, 1.2, 0.9, 0.2, "comfy")[0]

    def freeu_state(p):
        to = p.model_options["transformer_options"]
        return {"freeu": to["unet3d"].get("freeu"),
                "patches": len(to.get("patches", {}).get("output_block_patch", []))}
    return {"orders": orders, "repeated": {k: list(v) if isinstance(v, tuple) else v
                                           for k, v in m.model_options["transformer_options"]["unet3d"].items()},
            "comfy_then_diffusers": freeu_state(comfy_then_diffusers),
            "diffusers_then_comfy": freeu_state(diffusers_then_comfy),
            "base_untouched": base.model_options == before}


def write_lora(host, unet_name, file_name, layout="peft", seed=0, std=0.02, rank=2):
    """Write a random LoRA covering every Linear / Conv weight of the stand-in UNet into models/loras."""
    unet = _load(host, unet_name).model.diffusion_model
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, module in unet.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or weight.ndim < 2:
            continue
        ones = (1,) * (weight.ndim - 2)
        up = torch.randn(weight.shape[0], rank, *ones, generator=gen) * std
        down = torch.randn(rank, *weight.shape[1:], generator=gen) * std
        if layout == "peft":
            sd[f"unet.{name}.lora_A.weight"], sd[f"unet.{name}.lora_B.weight"] = down, up
        elif layout == "comfy":  # ComfyUI's own model names
            sd[f"diffusion_model.{name}.lora_down.weight"], sd[f"diffusion_model.{name}.lora_up.weight"] = down, up
        else:  # kohya with alpha
            key = "lora_unet_" + name.replace(".", "_")
            sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
            sd[f"{key}.alpha"] = torch.tensor(float(rank) / 2)
    from safetensors.torch import save_file
    folder = host.folder_paths.get_folder_paths("loras")[0]
    os.makedirs(folder, exist_ok=True)
    save_file(sd, os.path.join(folder, file_name))
    cache = getattr(host.folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.clear()
    return {"entries": len(sd)}


def lora_weights_vs_by_hand(host, unet_name, lora_name, strength):
    """Patch weights through ModelPatcher (as loading for sampling does), compare with base + strength * alpha/rank
    * up @ down computed here, then unpatch and compare with the base bit for bit."""
    from safetensors.torch import load_file
    base = _load(host, unet_name)
    unet = base.model.diffusion_model
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    clone = _node(host, "UNet3DLoraLoader").load(base, lora_name, strength)[0]
    lora = load_file(host.folder_paths.get_full_path("loras", lora_name))
    want = dict(before)
    for key in lora:
        if key.endswith((".lora_A.weight", ".lora_down.weight")):
            stem = key.rsplit(".lora_", 1)[0]
            up_key = key.replace(".lora_A.", ".lora_B.").replace(".lora_down.", ".lora_up.")
            down, up = lora[key], lora[up_key]
            alpha = lora.get(f"{stem}.alpha")
            scale = 1.0 if alpha is None else alpha.item() / down.shape[0]
            name = stem[len("unet."):] if stem.startswith("unet.") else None
            if name is None:  # kohya: find the weight by its underscored name
                name = next(k[:-7] for k in before if k.endswith(".weight")
                            and "lora_unet_" + k[:-7].replace(".", "_") == stem)
            w = before[f"{name}.weight"]
            want[f"{name}.weight"] = w + strength * scale * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    clone.patch_model()
    patched = {k: v.clone() for k, v in unet.state_dict().items()}
    clone.unpatch_model()
    after = unet.state_dict()
    changed = sum(not torch.equal(patched[k], before[k]) for k in before)
    return {"max_abs_vs_hand": max((patched[k] - want[k]).abs().max().item() for k in want),
            "changed": changed, "adapted": sum(k.endswith(".weight") and before[k].ndim >= 2 for k in before),
            "restored": all(torch.equal(after[k], before[k]) for k in before),
            "equal_to_base": all(torch.equal(patched[k], before[k]) for k in before)}
