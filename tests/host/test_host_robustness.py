"""Hostile node inputs in a real ComfyUI graph: damaged or code-running LoRA files, NaN strengths and FreeU values,
damaged model headers, diffusers folders whose config.json asks for absurd sizes, a video that can never fit in
memory, an empty latent larger than the machine. Each prompt fails with the exact kind of this package's error
(``unet3d.errors``), naming the file or value; nothing runs code from a file; and the next good prompt gives the
same latent, bit for bit, as before the hostile ones (nothing cached was poisoned)."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hostile_files import bad_entry_file, code_running_pickle, header_only, header_only_unet, unet_shapes
from safetensors.torch import save_file

from comfy_runner import graphs
from comfy_runner.standins import TINY_UNET

pytestmark = pytest.mark.host
PROBES = Path(__file__).resolve().parent / "probes_robustness.py"
TAG = "unet3d-hostile-"
WIDE = dict(block_out_channels=(320, 320), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1, cross_attention_dim=1024,
            attention_head_dim=64)


def _lora(shapes, scale=0.02, seed=0):
    """A PEFT LoRA of rank 2 on every attention projection of a model with ``shapes``."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if key.endswith(("to_q.weight", "to_k.weight", "to_v.weight")):
            module = key[:-len(".weight")]
            sd[f"unet.{module}.lora_A.weight"] = torch.randn(2, shape[1], generator=gen) * scale
            sd[f"unet.{module}.lora_B.weight"] = torch.randn(shape[0], 2, generator=gen) * scale
    return sd


@pytest.fixture(scope="module")
def files(host, tmp_path_factory):
    """Hostile files in the host's model folders (removed afterwards), by role."""
    folders = {k: Path(v) for k, v in host.proc.call(str(PROBES), "model_folders").items()}
    tmp = tmp_path_factory.mktemp("hostile")
    made, names = [], {}

    def put(kind, name):
        path = folders[kind] / (TAG + name)
        made.append(path)
        names[name] = path
        return path
    lora = _lora(unet_shapes(**TINY_UNET))
    nan = dict(lora)
    first = sorted(k for k in nan if k.endswith("lora_B.weight"))[0]
    nan[first] = nan[first].clone()
    nan[first][0, 0] = math.nan
    save_file(nan, put("loras", "nan.safetensors"))
    save_file(lora, tmp / "good.safetensors")
    data = (tmp / "good.safetensors").read_bytes()
    put("loras", "truncated.safetensors").write_bytes(data[: len(data) // 2])
    marker = tmp / "PWNED"
    code_running_pickle(put("loras", "evil.pt"), marker)
    save_file(_lora(unet_shapes(**{**TINY_UNET, "block_out_channels": [64, 128, 256, 256]})),
              put("loras", "other-size.safetensors"))
    bad_entry_file(put("unet", "negative-shape.safetensors"), "negative-shape")
    header_only_unet(put("unet", "wide.safetensors"), **WIDE)
    for name, config in {"huge": {**TINY_UNET, "block_out_channels": [1_000_000] * 4},
                         "number": {**TINY_UNET, "block_out_channels": 5}}.items():
        folder = put("diffusers", name) / "unet"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel", **config}))
        header_only(folder / "diffusion_pytorch_model.safetensors", unet_shapes(**TINY_UNET))
    host.proc.call(str(PROBES), "refresh")
    yield {"names": {k: v.name for k, v in names.items()}, "paths": names, "marker": marker}
    for path in made:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    host.proc.call(str(PROBES), "refresh")


def _fails(host, prompt, kind, *words):
    answer = host.proc.run(prompt, check=False)
    assert not answer["ok"], "the prompt must fail"
    error = answer["error"]
    assert isinstance(error, dict) and error.get("exception_type", "").endswith("." + kind), error
    message = error["exception_message"]
    for word in words:
        assert str(word) in message, (word, message)
    return message


def _small(host, **kw):
    return host.prompt(seed=61, steps=1, width=64, height=64, frames=4, **kw)


def test_hostile_inputs_fail_clearly_and_the_next_good_prompt_is_unchanged(host, files):
    names, paths = files["names"], files["paths"]
    before, _ = host.sample(_small(host), fresh=True)

    lora = lambda name, strength=1.0: ("UNet3DLoraLoader", {"lora_name": name, "strength": strength})  # noqa: E731
    _fails(host, _small(host, patch=lora(names["nan.safetensors"], math.nan)), "SettingError",
           "LoRA strength must be a finite number", "nan")
    _fails(host, _small(host, patch=lora(names["nan.safetensors"])), "LoraError",
           paths["nan.safetensors"], "NaN or infinite", "lora_B.weight")
    message = _fails(host, _small(host, patch=lora(names["evil.pt"])), "UnsafeCheckpointError",
                     paths["evil.pt"], "Nothing from it was executed")
    assert "weights_only=False" not in message and not files["marker"].exists()
    _fails(host, _small(host, patch=lora(names["truncated.safetensors"])), "CorruptCheckpointError",
           paths["truncated.safetensors"], "truncated")
    _fails(host, _small(host, patch=lora(names["other-size.safetensors"])), "LoraError",
           paths["other-size.safetensors"], "model of another size")
    freeu = {"b1": math.nan, "b2": 1.4, "s1": 0.9, "s2": 0.2}
    _fails(host, _small(host, patch=("UNet3DFreeU", freeu)), "SettingError", "`b1` must be a finite number", "nan")

    def loader(name):
        return graphs.t2v_prompt(name, host.standins["clip"], seed=61, steps=1, width=64, height=64, frames=4)
    _fails(host, loader(names["negative-shape.safetensors"]), "CorruptCheckpointError",
           paths["negative-shape.safetensors"], "shape [-2]")
    huge = paths["huge"] / "unet" / "config.json"
    _fails(host, loader(f"[diffusers] {names['huge']}"), "CheckpointError", huge, "1000000 channels in a level")
    _fails(host, loader(f"[diffusers] {names['number']}"), "CheckpointError",
           paths["number"] / "unet" / "config.json", "`block_out_channels`=5: must be a list")

    after, _ = host.sample(_small(host))
    assert torch.equal(before, after), "a hostile prompt changed what a good prompt computes"


def test_a_video_that_can_never_fit_is_refused_before_sampling(host, files):
    """4096 frames at 576x320 through a 320-channel UNet3D: hundreds of GB of activations, more than the machine
    has in all. The sampler's first model call is refused, naming frame batching, before anything is allocated."""
    from unet3d.memory.estimate import MemoryOptions, Workload, estimate
    total = host.proc.call(str(PROBES), "total_memory")
    least = estimate(WIDE, Workload(4096, 40, 72, 1, 1), MemoryOptions("fp32", "fp32", "fused", "max", (1, 1)))
    videos = math.ceil(1.5 * total / least.activation_bytes)
    if videos > 4:
        pytest.skip(f"this machine has {total / 1e9:.0f} GB: no latent the test can afford is too big for it")
    prompt = graphs.t2v_prompt(files["names"]["wide.safetensors"], host.standins["clip"], seed=62, steps=1,
                               width=576, height=320, frames=4096, batch_size=videos)
    _fails(host, prompt, "MemoryLimitError", "4096 frames at 576x320", "UNet3D Frame Batching", "context_length")
    after, _ = host.sample(_small(host))
    assert torch.isfinite(after).all()


def test_an_empty_latent_larger_than_the_machine_is_refused(host):
    prompt = host.prompt(seed=63, steps=1, width=16384, height=16384, frames=4096, batch_size=64)
    _fails(host, prompt, "MemoryLimitError", "Empty UNet3D Video Latent", "Use fewer frames")


def test_a_mistyped_set_input_is_named_with_the_close_names(host):
    from comfy_runner.host import cache_root
    from comfy_runner.workflow import WorkflowError
    example = Path(__file__).resolve().parents[2] / "example_workflows" / "zeroscope_v2_576w_text_to_video.json"
    with pytest.raises(WorkflowError, match=r"\(KSampler\) has no input 'stepz'\. Did you mean 'steps'\?"):
        host.proc.request("prepare", workflow=json.loads(example.read_text()), sets=["KSampler.stepz=4"],
                          cache_dir=str(cache_root()))
    prepared = host.proc.request("prepare", workflow=json.loads(example.read_text()), sets=["KSampler.steps=1"],
                                 cache_dir=str(cache_root()))
    assert [n for n in prepared["prompt"].values() if n["class_type"] == "KSampler"][0]["inputs"]["steps"] == 1
