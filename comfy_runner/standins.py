"""Random-weight stand-ins so a workflow runs on a machine without the real weights (and for the host tests).

Runs inside the host process (``worker.py``). It writes, once per machine, into a cache folder, and links into the
host's model folders:

* ``unet/unet3d-random-tiny.safetensors``: a tiny UNet3D (widths 32/64/128/128, the 1:2:4:4 ratio of ModelScope, so
  core FreeU's channel keys still match), diffusers names, 1024-wide cross-attention;
  ``diffusers/unet3d-random-tiny/unet/``: the same model as a diffusers folder;
* ``clip/unet3d-random-openclip-h.safetensors``: an SD2 / OpenCLIP-H text encoder (``text_model.*`` keys). ComfyUI
  builds that encoder from a fixed config (1024 wide, 24 layers), so it cannot be made smaller; stored fp16;
* ``vae_approx/taesd_encoder.safetensors`` / ``taesd_decoder.safetensors``: a random TAESD (VAELoader's ``taesd``),
  only where no TAESD is present (a real one is kept).

Outputs made with these are noise. Nothing here overwrites an existing file.
"""
import json
import os

import torch

UNET_NAME = "unet3d-random-tiny.safetensors"
UNET_DIFFUSERS = "unet3d-random-tiny"
CLIP_NAME = "unet3d-random-openclip-h.safetensors"
VAE_NAME = "taesd"
TINY_UNET = {
    "block_out_channels": [32, 64, 128, 128],
    "layers_per_block": 1,
    "attention_head_dim": 8,
    "cross_attention_dim": 1024,
    "norm_num_groups": 32,
}
FORMAT = "2"  # bump when the stand-ins change


def _save(sd, path):
    from safetensors.torch import save_file
    tmp = f"{path}.tmp{os.getpid()}"
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp, metadata={"unet3d_standin": "random weights"})
    os.replace(tmp, path)


def _random_unet(path, config_path):
    from unet3d import UNet3DConditionModel  # the plugin root is on sys.path (last)
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        model = UNet3DConditionModel(**TINY_UNET)
    _save(model.state_dict(), path)
    config = {"_class_name": "UNet3DConditionModel", **TINY_UNET}
    with open(config_path, "w") as fh:
        json.dump(config, fh, indent=1)


def _random_clip(path):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    config = CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                            num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
                            projection_dim=1024, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    with torch.device("meta"):
        shapes = {k: (tuple(v.shape), v.dtype) for k, v in CLIPTextModelWithProjection(config).state_dict().items()}
    gen = torch.Generator().manual_seed(4321)
    sd = {}
    for key, (shape, dtype) in shapes.items():
        if not dtype.is_floating_point:
            continue                                   # position_ids: ComfyUI makes its own
        name = key if key.startswith(("text_model.", "text_projection")) else "text_model." + key
        if "norm" in key and key.endswith("weight"):
            t = torch.ones(shape)
        elif key.endswith("bias"):
            t = torch.zeros(shape)
        else:
            t = torch.randn(shape, generator=gen) * 0.02
        sd[name] = t.half()
    _save(sd, path)


def _random_taesd(enc_path, dec_path):
    """ComfyUI's TAESD layers skip weight init (comfy.ops), so the names and shapes come from its classes and the
    values are drawn here: fan-in scaled normal weights, zero biases."""
    from comfy.taesd import taesd
    gen = torch.Generator().manual_seed(99)
    for module, path in ((taesd.Encoder(), enc_path), (taesd.Decoder(), dec_path)):
        sd = {}
        for key, t in module.state_dict().items():
            if t.ndim >= 2:
                fan_in = t[0].numel()
                sd[key] = torch.randn(t.shape, generator=gen) * (1.0 / fan_in) ** 0.5
            else:
                sd[key] = torch.zeros(t.shape)
        _save(sd, path)


def _link(src, folder, name):
    os.makedirs(folder, exist_ok=True)
    dst = os.path.join(folder, name)
    if not os.path.lexists(dst):
        os.symlink(src, dst)
    return dst


def provision(host, cache_dir, clip=True):
    """Create the stand-ins (cached) and link them into the host's first model folder of each kind."""
    fp = host.folder_paths
    cache = os.path.join(cache_dir, f"standins-v{FORMAT}")
    os.makedirs(cache, exist_ok=True)
    made = []
    unet = os.path.join(cache, UNET_NAME)
    unet_dir = os.path.join(cache, UNET_DIFFUSERS, "unet")
    if not os.path.exists(unet) or not os.path.exists(os.path.join(unet_dir, "config.json")):
        os.makedirs(unet_dir, exist_ok=True)
        _random_unet(unet, os.path.join(unet_dir, "config.json"))
        if os.path.lexists(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors")):
            os.remove(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
        os.link(unet, os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
        made.append(unet)
    _link(unet, fp.get_folder_paths("unet")[0], UNET_NAME)
    _link(os.path.join(cache, UNET_DIFFUSERS), fp.get_folder_paths("diffusers")[0], UNET_DIFFUSERS)
    result = {"unet": UNET_NAME, "unet_diffusers": "[diffusers] " + UNET_DIFFUSERS, "vae": VAE_NAME,
              "folders": {"unet": fp.get_folder_paths("unet"), "clip": fp.get_folder_paths("clip"),
                          "vae": fp.get_folder_paths("vae"), "diffusers": fp.get_folder_paths("diffusers")}}
    if clip:
        clip_path = os.path.join(cache, CLIP_NAME)
        if not os.path.exists(clip_path):
            _random_clip(clip_path)
            made.append(clip_path)
        _link(clip_path, fp.get_folder_paths("clip")[0], CLIP_NAME)
        result["clip"] = CLIP_NAME
    approx = fp.get_filename_list("vae_approx")
    if not any(n.startswith("taesd_decoder.") for n in approx) or \
            not any(n.startswith("taesd_encoder.") for n in approx):
        enc, dec = os.path.join(cache, "taesd_encoder.safetensors"), os.path.join(cache, "taesd_decoder.safetensors")
        if not (os.path.exists(enc) and os.path.exists(dec)):
            _random_taesd(enc, dec)
            made += [enc, dec]
        folder = fp.get_folder_paths("vae_approx")[0]
        _link(enc, folder, "taesd_encoder.safetensors")
        _link(dec, folder, "taesd_decoder.safetensors")
    refresh_file_lists(fp)
    result["created"] = made
    return result


def refresh_file_lists(fp):
    """Make the host list model files again (it caches the lists of each folder)."""
    cache = getattr(fp, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.clear()


LOADER_INPUTS = {"UNet3DLoader": ("unet_name", "unet"), "CLIPLoader": ("clip_name", "clip"),
                 "VAELoader": ("vae_name", "vae")}
QUICK = {"max_side": 256, "frames": 8, "steps": 4}


def substitute(host, prompt, cache_dir, quick=True):
    """Point loaders whose file is missing at the stand-ins (created on demand); with ``quick``, shrink the latent
    size, frame count and steps of a graph that now runs on random weights. Returns (prompt, notes)."""
    classes = host.nodes.NODE_CLASS_MAPPINGS
    missing = []
    for node_id, node in prompt.items():
        spec = LOADER_INPUTS.get(node["class_type"])
        if not spec or node["class_type"] not in classes:
            continue
        name, kind = spec
        choices = classes[node["class_type"]].INPUT_TYPES()["required"][name][0]
        if node["inputs"].get(name) not in choices:
            missing.append((node_id, name, kind, node["inputs"].get(name)))
    if not missing:
        return prompt, []
    made = provision(host, cache_dir)
    notes = []
    for node_id, name, kind, wanted in missing:
        folders = host.folder_paths.get_folder_paths(kind)
        prompt[node_id]["inputs"][name] = made[kind]
        notes.append(f"{kind} {wanted!r} not found in {folders}: using the RANDOM stand-in {made[kind]!r}. Put the "
                     f"real file in {folders[0]} to get a real video.")
    if quick:
        notes += _shrink(prompt)
    return prompt, notes


def _shrink_schedule(inputs, frames):
    """A UNet3D Prompt Travel schedule for ``frames`` frames instead of its own: keyframes scaled down (a later
    keyframe wins a shared frame). A schedule that does not parse is left for the node to report."""
    from unet3d.video.prompt_schedule import parse_schedule
    try:
        keyframes = parse_schedule(inputs.get("text"), inputs.get("frames"))
    except ValueError:
        return False
    scaled = {k.frame * frames // inputs["frames"]: k.text for k in keyframes}
    inputs["text"] = "\n".join(f"{frame}: {text}" for frame, text in sorted(scaled.items()))
    inputs["frames"] = frames
    return True


def _shrink(prompt):
    notes = []
    for node_id, node in prompt.items():
        inputs = node["inputs"]
        if node["class_type"] in ("UNet3DEmptyLatentVideo", "EmptyLatentImage"):
            w, h = inputs.get("width", 512), inputs.get("height", 512)
            scale = min(1.0, QUICK["max_side"] / max(w, h))
            inputs["width"], inputs["height"] = max(64, int(w * scale) // 64 * 64), max(64, int(h * scale) // 64 * 64)
            if "frames" in inputs:
                inputs["frames"] = min(inputs["frames"], QUICK["frames"])
            notes.append(f"node {node_id}: latent reduced to {inputs['width']}x{inputs['height']}"
                         f"{', %d frames' % inputs['frames'] if 'frames' in inputs else ''} for the random-weight run")
        if isinstance(inputs.get("steps"), int) and inputs["steps"] > QUICK["steps"]:
            inputs["steps"] = QUICK["steps"]
            notes.append(f"node {node_id}: steps reduced to {QUICK['steps']} for the random-weight run")
    # per-frame prompts follow the (single) video latent's new frame count
    latent_frames = {n["inputs"].get("frames") for n in prompt.values() if n["class_type"] == "UNet3DEmptyLatentVideo"}
    only = next(iter(latent_frames)) if len(latent_frames) == 1 else None
    for node_id, node in prompt.items():
        inputs = node["inputs"]
        if node["class_type"] == "UNet3DPromptTravel" and isinstance(inputs.get("frames"), int):
            frames = only if isinstance(only, int) else min(inputs["frames"], QUICK["frames"])
            if frames < inputs["frames"] and _shrink_schedule(inputs, frames):
                notes.append(f"node {node_id}: prompt schedule rescaled to {frames} frames for the random-weight run")
    return notes
