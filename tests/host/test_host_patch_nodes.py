"""The UNet3D patch nodes (FreeU, attention slicing, feed-forward chunking, LoRA) in a real ComfyUI: same results
as unpatched where they promise it, diffusers' FreeU in diffusers mode, exact LoRA maths, and no trace left on the
cached MODEL, the unpatched branch of the same graph, or a later prompt. (Core FreeU / FreeU_V2: test_host_patches.)"""
from pathlib import Path

import pytest
import torch

from comfy_runner import graphs

pytestmark = pytest.mark.host

PROBES = Path(__file__).resolve().parent / "probes_patch_nodes.py"
LORA = "unet3d-test-lora-peft.safetensors"
LORA_KOHYA = "unet3d-test-lora-kohya.safetensors"
SLICES = ["auto", "max", "2", "3"]
CHUNKS = [(1, "sequence"), (2, "sequence"), (1, "batch"), (4, "batch")]


def _probe(host, func, **kw):
    return host.proc.call(str(PROBES), func, **kw)


@pytest.fixture(scope="module")
def loras(host):
    for name, layout in ((LORA, "peft"), (LORA_KOHYA, "kohya")):
        _probe(host, "write_lora", unet_name=host.standins["unet"], file_name=name, layout=layout, seed=len(name))
    return LORA, LORA_KOHYA


def _branch(prompt, tag, chain, seed):
    """Add ``loader -> chain -> KSampler(seed) -> SaveLatent`` to ``prompt``; return the sampler id."""
    model = [graphs.LOADER, 0]
    for i, (cls, inputs) in enumerate(chain):
        node = f"{tag}p{i}"
        prompt[node] = {"class_type": cls, "inputs": {"model": model, **inputs}}
        model = [node, 0]
    sampler = f"{tag}s"
    prompt[sampler] = {"class_type": "KSampler", "inputs": {**prompt[graphs.SAMPLER]["inputs"], "model": model,
                                                           "seed": seed}}
    prompt[f"{tag}o"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": tag}}
    return sampler


def _run(host, prompt, ids, fresh=False):
    host._n += 1
    cap = host.tmp / f"patchcap{host._n}"
    cap.mkdir()
    answer = host.proc.run(prompt, fresh=fresh, capture=list(ids), capture_dir=str(cap))
    out = {}
    for node in ids:
        raw = torch.load(answer["captured"][node])
        out[node] = (raw[0][0] if isinstance(raw[0], list) else raw[0])["samples"]
    return out


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_slicing_and_chunking_equal_unpatched_for_every_setting(host):
    # Slicing 'max' makes one attention call per (batch x head) row: a small latent and cfg 1 (one cond chunk).
    # Chunking needs sizes its chunk divides at every level (16x8 latent: 2 tokens at the deepest level).
    cases = {"slicing": (host.prompt(seed=31, steps=1, width=64, height=64, frames=4, cfg=1.0), []),
             "chunking": (host.prompt(seed=31, steps=1, width=128, height=64, frames=4), [])}
    for i, size in enumerate(SLICES):
        cases["slicing"][1].append(_branch(cases["slicing"][0], f"a{i}",
                                           [("UNet3DAttentionSlicing", {"slice_size": size})], 31))
    cases["slicing"][1].append(_branch(cases["slicing"][0], "b", [
        ("UNet3DAttentionSlicing", {"slice_size": "max"}),
        ("UNet3DForwardChunking", {"chunk_size": 1, "dim": "sequence"})], 31))
    for i, (chunk, dim) in enumerate(CHUNKS):
        cases["chunking"][1].append(_branch(cases["chunking"][0], f"c{i}",
                                            [("UNet3DForwardChunking", {"chunk_size": chunk, "dim": dim})], 31))
    errors = {}
    for name, (prompt, ids) in cases.items():
        out = _run(host, prompt, [graphs.SAMPLER, *ids])
        for node in ids:
            chain = [prompt[n]["inputs"] for n in sorted(prompt) if n.startswith(node[:-1] + "p")]
            errors[f"{node} {[{k: v for k, v in c.items() if k != 'model'} for c in chain]}"] = _rel(
                out[node], out[graphs.SAMPLER])
    assert len(errors) == len(SLICES) + 1 + len(CHUNKS)
    assert all(err < 1e-5 for err in errors.values()), errors


def test_freeu_diffusers_mode_equals_diffusers_enable_freeu(host):
    values = {"b1": 1.2, "b2": 1.4, "s1": 0.9, "s2": 0.2}
    r = _probe(host, "freeu_diffusers_mode_vs_diffusers", unet_name=host.standins["unet"], values=values)
    assert r["rel_plain"] < 1e-5, r          # same weights, same model without FreeU
    assert r["rel_freeu"] < 1e-5, r
    assert r["effect"] > 1e-3, r             # FreeU really changed the output
    assert r["base_options_untouched"], r


def test_freeu_comfy_mode_equals_core_freeu_node(host):
    values = {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}
    prompt = host.prompt(seed=32, steps=1, frames=4)
    ours = _branch(prompt, "fc", [("UNet3DFreeU", {**values, "mode": "comfy"})], 32)
    core = _branch(prompt, "fk", [("FreeU", values)], 32)
    diff = _branch(prompt, "fd", [("UNet3DFreeU", {**values, "mode": "diffusers"})], 32)
    out = _run(host, prompt, [graphs.SAMPLER, ours, core, diff])
    assert torch.isfinite(out[ours]).all()
    assert _rel(out[ours], out[core]) < 1e-6
    assert _rel(out[ours], out[graphs.SAMPLER]) > 1e-3
    assert _rel(out[ours], out[diff]) > 1e-4, "the two modes pick different stages"


def test_stacking_in_any_order_and_the_later_node_wins(host):
    r = _probe(host, "stacking", unet_name=host.standins["unet"])
    for order, seen in r["orders"].items():
        assert seen == {"keys": ["attention_slice", "ff_chunk", "freeu"], "parents_untouched": True}, order
    assert r["repeated"] == {"attention_slice": 2, "ff_chunk": [1, 0]}
    # the deprecated comfy mode is core FreeU (a patch of its own): a later diffusers-mode node adds to it
    assert r["comfy_then_diffusers"] == {"freeu": {"s1": 0.9, "s2": 0.2, "b1": 1.2, "b2": 1.4}, "patches": 1}
    assert r["diffusers_then_comfy"] == {"freeu": None, "patches": 1}
    assert r["base_untouched"]


@pytest.mark.parametrize("strength", [0.0, 1.0, -0.7])
def test_lora_weights_equal_merged_by_hand_and_unpatch_restores_exactly(host, loras, strength):
    for name in loras:
        r = _probe(host, "lora_weights_vs_by_hand", unet_name=host.standins["unet"], lora_name=name,
                   strength=strength)
        assert r["restored"], r
        if strength == 0:
            assert r["equal_to_base"], r
        else:
            assert r["changed"] == r["adapted"] and r["max_abs_vs_hand"] < 1e-6, r


def test_lora_strength_zero_sampling_equals_no_lora(host, loras):
    prompt = host.prompt(seed=33, steps=1, frames=4)
    zero = _branch(prompt, "l0", [("UNet3DLoraLoader", {"lora_name": LORA, "strength": 0.0})], 33)
    one = _branch(prompt, "l1", [("UNet3DLoraLoader", {"lora_name": LORA, "strength": 1.0})], 33)
    out = _run(host, prompt, [graphs.SAMPLER, zero, one])
    assert torch.equal(out[zero], out[graphs.SAMPLER])
    assert _rel(out[one], out[graphs.SAMPLER]) > 1e-3


def test_all_patch_nodes_leave_the_unpatched_branch_and_later_prompts_untouched(host, loras):
    small = {"steps": 1, "frames": 4, "width": 64, "height": 64}
    reference = host.prompt(seed=41, **small)
    later_id = _branch(reference, "r", [], 42)
    want = _run(host, reference, [graphs.SAMPLER, later_id], fresh=True)   # never saw a patch

    patched = host.prompt(seed=41, **small)
    chain = [("UNet3DLoraLoader", {"lora_name": LORA, "strength": 1.0}),
             ("UNet3DLoraLoader", {"lora_name": LORA_KOHYA, "strength": 0.5}),
             ("UNet3DFreeU", {"b1": 1.2, "b2": 1.4, "s1": 0.9, "s2": 0.2, "mode": "comfy"}),
             ("UNet3DAttentionSlicing", {"slice_size": "auto"}),
             ("UNet3DForwardChunking", {"chunk_size": 2, "dim": "batch"})]
    patched_id = _branch(patched, "x", chain, 41)
    got = _run(host, patched, [graphs.SAMPLER, patched_id], fresh=True)
    assert _rel(got[patched_id], want[graphs.SAMPLER]) > 1e-3, "the patches must act"
    assert torch.equal(got[graphs.SAMPLER], want[graphs.SAMPLER]), "unpatched branch of the patched graph"

    later = _run(host, host.prompt(seed=42, **small), [graphs.SAMPLER])      # same executor: cached MODEL
    assert torch.equal(later[graphs.SAMPLER], want[later_id]), "a later prompt after the patched graph"


def test_bad_inputs_are_clear_errors(host):
    prompt = host.prompt(seed=34, steps=1)
    del prompt[graphs.OUTPUT]  # only the bad branch is an output, so validation fails the whole prompt
    _branch(prompt, "e", [("UNet3DAttentionSlicing", {"slice_size": "half"})], 34)
    answer = host.proc.run(prompt, check=False)
    assert not answer["ok"] and "slice_size 'half'" in str(answer["node_errors"]), answer
