"""ComfyUI's own nodes on a UNet3D MODEL, in a real ComfyUI (the embedded March-2024 host, or ``COMFYUI_PATH``):
guidance and token-merging patches act through ComfyUI's transformer patch protocol, caches through its
diffusion-model wrappers, core LoRA loaders either apply a UNet3D LoRA exactly or the log says what to use, and no
result depends on an earlier prompt. Each effect is measured against the unpatched run with the same seed."""
import re
from pathlib import Path

import pytest
import torch

from comfy_runner import graphs
from comfy_runner.standins import TINY_UNET

pytestmark = pytest.mark.host

PROBES = Path(__file__).resolve().parent / "probes_core_nodes.py"
PATCH_PROBES = Path(__file__).resolve().parent / "probes_patch_nodes.py"
OLD = "march-2024"
# Core nodes that are not in every supported ComfyUI: the versions that lack them.
ABSENT_IN = {"PerturbedAttentionGuidance": {OLD}, "EasyCache": {OLD}, "LazyCache": {OLD},
             "ContextWindowsManual": {OLD}}
CORE_PATCHES = {
    "PerturbedAttentionGuidance": {"scale": 3.0},
    "SelfAttentionGuidance": {"scale": 0.5, "blur_sigma": 2.0},
    "TomePatchModel": {"ratio": 0.5},
    "HyperTile": {"tile_size": 64, "swap_size": 2, "max_depth": 0, "scale_depth": False},
    "EasyCache": {"reuse_threshold": 1.5, "start_percent": 0.0, "end_percent": 1.0, "verbose": False},
    "LazyCache": {"reuse_threshold": 1.5, "start_percent": 0.0, "end_percent": 1.0, "verbose": False},
}


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _available(host, node):
    """True when the host has ``node``; where it does not, that must be a version known to lack it."""
    classes = host.proc.request("object_info")["classes"]
    if node in classes:
        return True
    assert host.version in ABSENT_IN.get(node, ()), f"{node} is missing from ComfyUI {host.version}"
    return False


def _log(host) -> str:
    return (host.tmp / "host.log").read_text(errors="replace")


# (node, version): core's own failure on any batch of several rows per prompt (image batches too), inside core
CORE_BUGS = {("EasyCache", "0.3.64"): "nodes_easycache.py"}


@pytest.mark.parametrize("node", sorted(CORE_PATCHES))
def test_core_patch_nodes_act_on_the_unet3d_model(host, node):
    if not _available(host, node):
        return
    steps = 6 if "Cache" in node else 3
    if (node, host.version) in CORE_BUGS:
        answer = host.proc.run(host.prompt(seed=61, steps=steps, patch=(node, CORE_PATCHES[node])), check=False)
        assert not answer["ok"] and CORE_BUGS[node, host.version] in str(answer["error"]["traceback"][-1])
        return
    base, _ = host.sample(host.prompt(seed=61, steps=steps))
    patched, answer = host.sample(host.prompt(seed=61, steps=steps, patch=(node, CORE_PATCHES[node])))
    assert answer["ok"] and torch.isfinite(patched).all()
    assert _rel(patched, base) > 1e-3, f"{node} had no effect on the UNet3D model"
    again, _ = host.sample(host.prompt(seed=61, steps=steps))
    assert torch.equal(again, base), f"{node} changed the cached MODEL"


def _expected_spatial_blocks():
    """("input", i) / ("middle", 0) / ("output", i) of the stand-in UNet's spatial transformers, read from its
    original-layout key names (the test's own converter, not the plugin's numbering)."""
    from helpers_checkpoint import diffusers_to_original

    from unet3d import UNet3DConditionModel
    from unet3d.network.config import DEFAULTS
    with torch.device("meta"):
        sd = UNet3DConditionModel(**TINY_UNET).state_dict()
    blocks = set()
    for key in diffusers_to_original(sd, {**DEFAULTS, **TINY_UNET}):
        m = re.match(r"(input|output)_blocks\.(\d+)\.1\.transformer_blocks", key)
        if m and key.startswith("input_blocks.0."):
            continue                                 # input_blocks.0.1 is transformer_in, a temporal transformer
        if m:
            blocks.add((m.group(1), int(m.group(2))))
        elif key.startswith("middle_block.1.transformer_blocks"):
            blocks.add(("middle", 0))
    return blocks


def test_transformer_patches_see_comfyui_block_names_and_options(host):
    r = host.proc.call(str(PROBES), "transformer_patches_seen", prompt=host.prompt(seed=62, steps=1, frames=8))
    seen = r["attn1_patch"]
    blocks = {tuple(s["block"]) for s in seen}
    assert blocks == _expected_spatial_blocks(), blocks
    for s in seen:
        rows, _, height, width = s["original_shape"]
        assert s["block_index"] == 0 and s["has_sigmas"] and set(s["cond_or_uncond"]) <= {0, 1}
        assert rows == r["rows"] * len(s["cond_or_uncond"]) and (height, width) == (16, 16)
        shape = s["activations_shape"]
        assert shape[0] == rows and s["tokens"] == shape[2] * shape[3]
        assert s["n_heads"] * s["dim_head"] == s["activations_shape"][1]
    assert sorted({s["transformer_index"] for s in seen}) == list(range(len(blocks)))
    assert {tuple(b) for b in r["attn2_output_patch"]} == blocks
    replaced = {(x["name"], tuple(x["block"]), x["tokens"]) for x in r["replaced"]}
    assert replaced == {("spatial", ("output", 5), 16 * 16 // 4), ("temporal", ("temporal_middle", 0), 8)}, replaced
    assert r["rel"] < 1e-5, "patches that change nothing must leave the output as it was"


def test_attention_override_is_called_for_every_attention(host):
    r = host.proc.call(str(PROBES), "attention_override_calls", prompt=host.prompt(seed=63, steps=2, frames=4))
    assert r["model_calls"] > 0 and r["override_calls"] == r["layers"] * r["model_calls"], r
    assert r["equal"], "an override that runs the kernel it is given must not change the output"


@pytest.fixture(scope="module")
def core_loras(host):
    names = {}
    for layout in ("kohya", "peft", "comfy"):
        name = f"unet3d-core-{layout}.safetensors"
        host.proc.call(str(PATCH_PROBES), "write_lora", unet_name=host.standins["unet"], file_name=name,
                       layout=layout, seed=7)
        names[layout] = name
    return names


def _lora_graph(host, loader, name, seed=64):
    inputs = {"lora_name": name, ("strength" if loader == "UNet3DLoraLoader" else "strength_model"): 1.0}
    return host.sample(host.prompt(seed=seed, steps=1, frames=4, patch=(loader, inputs)))[0]


def test_core_lora_loader_applies_kohya_names_exactly_like_the_unet3d_loader(host, core_loras):
    ours = _lora_graph(host, "UNet3DLoraLoader", core_loras["kohya"])
    core = _lora_graph(host, "LoraLoaderModelOnly", core_loras["kohya"])
    base = host.sample(host.prompt(seed=64, steps=1, frames=4))[0]
    assert _rel(ours, base) > 1e-3 and torch.equal(core, ours)


@pytest.mark.parametrize("layout", ["peft", "comfy"])
def test_core_lora_loader_on_other_names_applies_exactly_or_says_what_to_use(host, core_loras, layout):
    ours = _lora_graph(host, "UNet3DLoraLoader", core_loras[layout])
    before = _log(host)
    core = _lora_graph(host, "LoraLoaderModelOnly", core_loras[layout])
    told = "'Load UNet3D LoRA'" in _log(host)[len(before):]
    base = host.sample(host.prompt(seed=64, steps=1, frames=4))[0]
    assert _rel(ours, base) > 1e-3
    if torch.equal(core, ours):                      # the host maps these names (diffusion_model.* from 0.3 on)
        assert layout == "comfy" and host.version != OLD
    else:                                            # not mapped: no effect, and the log names the remedy
        assert torch.equal(core, base) and told, (layout, host.version)


def _windows_inputs(host):
    inputs = {"context_length": 4, "context_overlap": 1, "context_schedule": "standard_static", "context_stride": 1,
              "closed_loop": False, "fuse_method": "pyramid", "dim": 0}
    return {**inputs, "freenoise": False} if host.version != "0.3.64" else inputs


def test_frame_batching_stacked_with_core_context_windows_says_which_acts(host):
    if not _available(host, "ContextWindowsManual"):
        return
    ours = ("UNet3DFrameBatching", {"context_length": 4, "context_overlap": 1, "context_stride": 1,
                                    "closed_loop": False, "fuse_method": "pyramid", "max_batch_rows": 0})
    core = ("ContextWindowsManual", _windows_inputs(host))
    before = _log(host)
    prompt = host.prompt(seed=65, steps=1, frames=8, patch=[core, ours])
    host.proc.run(prompt, check=False)   # 0.3.64's core windows fail on frame batches before the model runs
    assert "UNet3D Frame Batching and ComfyUI's context windows" in _log(host)[len(before):]
    if host.version == "0.3.64":
        return
    before = _log(host)
    out, answer = host.sample(host.prompt(seed=65, steps=1, frames=8, patch=[ours, core]))
    assert answer["ok"] and torch.isfinite(out).all()
    assert "UNet3D Frame Batching and ComfyUI's context windows" in _log(host)[len(before):]


def _video_graph(host, seed, upscale, rows, frames=4, batch_size=2):
    """``batch_size`` videos of ``frames`` frames (conditioning through the latent node) -> [LatentUpscaleBy] ->
    LatentFromBatch(``rows``) -> KSampler; the sampler's output latent. LatentFromBatch numbers the rows, so every
    row gets the same noise whatever else is in the batch."""
    prompt = host.prompt(seed=seed, steps=2, frames=frames, batch_size=batch_size, width=96, height=96)
    source = [graphs.LATENT, 0]
    if upscale:
        prompt["u"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": source,
                                                                   "upscale_method": "nearest-exact",
                                                                   "scale_by": 1.5}}
        source = ["u", 0]
    prompt["b"] = {"class_type": "LatentFromBatch", "inputs": {"samples": source, "batch_index": rows[0],
                                                               "length": rows[1]}}
    prompt[graphs.SAMPLER]["inputs"]["latent_image"] = ["b", 0]
    return host.sample(prompt)[0]


@pytest.mark.parametrize("upscale", [False, True])
def test_each_of_two_side_by_side_videos_equals_that_video_sampled_alone(host, upscale):
    both = _video_graph(host, 66, upscale, (0, 8))
    for video in range(2):
        alone = _video_graph(host, 66, upscale, (4 * video, 4))
        part = both[4 * video:4 * (video + 1)]
        assert _rel(part, alone) < 1e-4, (video, _rel(part, alone))
    one_video = _video_graph(host, 66, upscale, (0, 8), frames=8, batch_size=1)   # same rows, same noise
    assert _rel(both, one_video) > 1e-3, "the two videos must not be sampled as one"


def _encode_and_resample(host):
    """VAE Encode of 8 images -> KSampler at denoise 0.6: a latent that comes without a frame count."""
    prompt = host.prompt(seed=67, steps=2, frames=4)
    prompt["i"] = {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 128, "batch_size": 8,
                                                          "color": 0x40A060}}
    prompt[graphs.VAE] = {"class_type": "VAELoader", "inputs": {"vae_name": host.standins["vae"]}}
    prompt["e"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["i", 0], "vae": [graphs.VAE, 0]}}
    prompt[graphs.SAMPLER]["inputs"].update(latent_image=["e", 0], denoise=0.6)
    del prompt[graphs.LATENT]
    return prompt


def test_same_graph_same_output_whatever_ran_before(host):
    graph = _encode_and_resample(host)
    alone = host.sample(graph, fresh=True)[0]
    unrelated = host.prompt(seed=68, steps=1, frames=4, batch_size=2)    # a video latent of the same shape
    host.sample(unrelated, fresh=True)
    after = host.sample(graph, fresh=True)[0]
    assert torch.isfinite(alone).all() and torch.equal(alone, after)
