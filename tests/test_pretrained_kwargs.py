"""from_pretrained / save_pretrained with diffusers' keyword arguments, checked against diffusers on the same weights:
sharded saves file for file, which weight files a folder resolves to, dtypes, config overrides, and clear refusals
for what is out of scope."""
import json
import logging

import pytest
import torch
from parity_helpers import TINY, inputs, twins
from safetensors.torch import load_file

import unet3d
from unet3d import CheckpointNotFoundError, UNet3DConditionModel
from unet3d.errors import UnsupportedOptionError


def _diffusers():
    from diffusers import UNet3DConditionModel as Reference

    return Reference


def _out(model):
    sample, context = inputs(1, 2)
    with torch.no_grad():
        return model(sample, 10, context).sample


def _same_weights(mine, theirs) -> bool:
    """The same tensor names and values: which weights a model loaded, independent of how it computes."""
    a, b = mine.state_dict(), theirs.state_dict()
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in b)


def _tensors(path):
    return load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)


@pytest.mark.parametrize("size, variant, safe", [("1MB", None, True), (700_000, "fp16", True), ("2.5MB", None, False)])
def test_sharded_save_matches_diffusers_file_for_file(tmp_path, size, variant, safe):
    reference, ours = twins(**TINY)
    reference.save_pretrained(tmp_path / "theirs", max_shard_size=size, variant=variant, safe_serialization=safe)
    index = ours.save_pretrained(tmp_path / "ours", max_shard_size=size, variant=variant, safe_serialization=safe)
    names = sorted(p.name for p in (tmp_path / "theirs").iterdir())
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == names
    assert index.name in names and index.name.endswith(".json") and sum("-of-" in n for n in names) > 1
    assert json.loads(index.read_text()) == json.loads((tmp_path / "theirs" / index.name).read_text())
    for name in (n for n in names if "-of-" in n):
        theirs, mine = _tensors(tmp_path / "theirs" / name), _tensors(tmp_path / "ours" / name)
        assert list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in theirs)
    want = _out(reference)
    from diffusers import AutoModel

    folder = str(tmp_path / "ours")
    pick = {"variant": variant, "use_safetensors": safe}  # diffusers finds sharded .bin only when told
    assert torch.equal(_out(_diffusers().from_pretrained(folder, **pick)), want)
    assert torch.equal(_out(AutoModel.from_pretrained(folder, **pick)), want)
    assert _same_weights(UNet3DConditionModel.from_pretrained(tmp_path / "theirs", variant=variant), reference)


def test_saving_again_leaves_one_copy_of_the_weights(tmp_path):
    reference, ours = twins(**TINY)
    ours.save_pretrained(tmp_path, variant="fp16")
    ours.save_pretrained(tmp_path, max_shard_size="1MB")
    ours.save_pretrained(tmp_path)  # replaces the shards and their index
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"]
    assert torch.equal(_out(_diffusers().from_pretrained(tmp_path)), _out(reference))
    ours.save_pretrained(tmp_path, max_shard_size="1MB")  # replaces the single file
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "diffusion_pytorch_model.safetensors" not in names and "diffusion_pytorch_model.fp16.safetensors" in names
    assert "diffusion_pytorch_model.safetensors.index.json" in names
    assert torch.equal(_out(_diffusers().from_pretrained(tmp_path)), _out(reference))


def test_folder_resolves_to_the_weights_diffusers_picks(tmp_path):
    """Three different weight sets in one folder: which one loads must follow diffusers for every use_safetensors."""
    sets = [twins(seed=seed, **TINY)[0] for seed in (0, 1, 2)]
    sets[0].save_pretrained(tmp_path)                               # single .safetensors
    sets[1].save_pretrained(tmp_path, safe_serialization=False)     # single .bin
    outputs = {}
    for use_safetensors in (None, True, False):
        theirs = _diffusers().from_pretrained(tmp_path, use_safetensors=use_safetensors)
        mine = UNet3DConditionModel.from_pretrained(tmp_path, use_safetensors=use_safetensors)
        outputs[use_safetensors] = _out(mine)
        assert _same_weights(mine, theirs)
    assert not torch.equal(outputs[True], outputs[False])
    sets[2].save_pretrained(tmp_path, max_shard_size="1MB")         # diffusers keeps the single file next to shards
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    for use_safetensors in (None, True, False):
        theirs = _diffusers().from_pretrained(tmp_path, use_safetensors=use_safetensors)
        mine = UNet3DConditionModel.from_pretrained(tmp_path, use_safetensors=use_safetensors)
        assert _same_weights(mine, theirs)
    assert _same_weights(UNet3DConditionModel.from_pretrained(tmp_path), sets[2])  # the index wins
    only_bin = tmp_path / "bin"
    sets[1].save_pretrained(only_bin, safe_serialization=False)
    with pytest.raises(OSError):
        _diffusers().from_pretrained(only_bin, use_safetensors=True)
    with pytest.raises(CheckpointNotFoundError, match="use_safetensors=None"):
        UNet3DConditionModel.from_pretrained(only_bin, use_safetensors=True)


@pytest.mark.parametrize("kwargs", [{}, {"torch_dtype": torch.float16}, {"dtype": torch.bfloat16},
                                    {"low_cpu_mem_usage": False, "torch_dtype": torch.bfloat16},
                                    {"low_cpu_mem_usage": True, "sample_size": 40}])
def test_load_keywords_give_what_diffusers_gives(tmp_path, kwargs):
    reference, ours = twins(**TINY)
    ours.save_pretrained(tmp_path)
    theirs = _diffusers().from_pretrained(tmp_path, **kwargs)
    mine = UNet3DConditionModel.from_pretrained(tmp_path, **kwargs)
    assert mine.dtype == theirs.dtype and not mine.training and not theirs.training
    assert all(torch.equal(t, mine.state_dict()[k]) for k, t in theirs.state_dict().items())
    assert mine.config.sample_size == theirs.config.sample_size and mine.config.sample_size == kwargs.get(
        "sample_size", None)
    assert mine.config._name_or_path == str(theirs.config._name_or_path) == str(tmp_path)


def test_output_loading_info_and_keywords_without_effect(tmp_path, caplog):
    reference, ours = twins(**TINY)
    ours.save_pretrained(tmp_path)
    _, their_info = _diffusers().from_pretrained(tmp_path, output_loading_info=True)
    with caplog.at_level(logging.WARNING, logger="unet3d"):
        model, info = UNet3DConditionModel.from_pretrained(
            tmp_path, output_loading_info=True, local_files_only=True, revision="main", cache_dir=str(tmp_path),
            disable_mmap=True, device_map="cpu")
    assert info == {k: [] for k in their_info} and all(not v for v in their_info.values())
    assert not [r for r in caplog.records if r.name == "unet3d"] and model.device == torch.device("cpu")
    for device_map in ({"": "cpu"}, torch.device("cpu"), "cpu"):
        assert UNet3DConditionModel.from_pretrained(tmp_path, device_map=device_map).device.type == "cpu"
    with caplog.at_level(logging.WARNING, logger="unet3d"):
        UNet3DConditionModel.from_pretrained(tmp_path, not_an_option=1)
    assert any("not_an_option" in r.getMessage() for r in caplog.records if r.name == "unet3d")
    for dtype in ("float16", "fp16", "torch.float16"):  # names too (diffusers would fall back to float32)
        assert UNet3DConditionModel.from_pretrained(tmp_path, torch_dtype=dtype).dtype == torch.float16
    with pytest.raises(unet3d.UNet3DError, match="torch_dtype"):
        UNet3DConditionModel.from_pretrained(tmp_path, torch_dtype=torch.int8)
    with pytest.raises(unet3d.UNet3DError, match="device_map"):
        UNet3DConditionModel.from_pretrained(tmp_path, device_map="nowhere")


@pytest.mark.parametrize("kwargs", [
    {"device_map": "auto"}, {"device_map": "balanced"}, {"device_map": {"conv_in": "cpu", "": "cpu"}},
    {"quantization_config": {"load_in_8bit": True}}, {"max_memory": {0: "1GB"}}, {"offload_folder": "off"},
    {"parallel_config": object()}, {"use_flashpack": True}, {"ignore_mismatched_sizes": True}])
def test_out_of_scope_load_options_are_refused_clearly(tmp_path, kwargs):
    _, ours = twins(**TINY)
    ours.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedOptionError, match="out of scope") as refused:
        UNet3DConditionModel.from_pretrained(tmp_path, **kwargs)
    assert isinstance(refused.value, NotImplementedError) and isinstance(refused.value, unet3d.UNet3DError)


def test_hub_ids_quantised_configs_and_push_to_hub_are_refused_clearly(tmp_path):
    with pytest.raises(CheckpointNotFoundError) as refused:
        UNet3DConditionModel.from_pretrained("cerspense/zeroscope_v2_576w", subfolder="unet")
    text = str(refused.value)
    assert "Hugging Face Hub" in text and "out of scope" in text and "only" in text
    assert "huggingface-cli download cerspense/zeroscope_v2_576w --include 'unet/*'" in text
    _, ours = twins(**TINY)
    for kwargs in ({"push_to_hub": True}, {"use_flashpack": True}):
        with pytest.raises(UnsupportedOptionError, match="out of scope"):
            ours.save_pretrained(tmp_path / "x", **kwargs)
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "gguf"}}))
    with pytest.raises(UnsupportedOptionError, match="quantis"):
        UNet3DConditionModel.from_pretrained(tmp_path)


def test_save_keywords_bad_sizes_and_secondary_processes_like_diffusers(tmp_path):
    reference, ours = twins(**TINY)
    for size in ("5GiB", "lots", 0, "1.5 PB"):
        if size != 0:  # diffusers takes 0 (one shard per tensor); unet3d asks for a positive size
            with pytest.raises(ValueError):
                reference.save_pretrained(tmp_path / "theirs-bad", max_shard_size=size)
        with pytest.raises(unet3d.ConfigError, match="max_shard_size"):
            ours.save_pretrained(tmp_path / "ours-bad", max_shard_size=size)
    assert not (tmp_path / "ours-bad").exists()
    reference.save_pretrained(tmp_path / "theirs", is_main_process=False)
    ours.save_pretrained(tmp_path / "ours", is_main_process=False)
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == \
        sorted(p.name for p in (tmp_path / "theirs").iterdir()) == ["diffusion_pytorch_model.safetensors"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(unet3d.CheckpointError, match="is a file"):
        ours.save_pretrained(tmp_path / "file")
