"""Round trips between diffusers (the oracle) and our loader/saver/converter, in every folder form diffusers writes."""
import json

import pytest
import torch
from helpers_checkpoint import FIXTURES, diffusers_to_original, forward, reference, rel_err, single_thread  # noqa: F401
from safetensors.torch import load_file

from unet3d import UNet3DConditionModel
from unet3d.convert import main as convert_main

pytestmark = pytest.mark.usefixtures("single_thread")


def _diffusers_load(folder, **kwargs):
    from diffusers import UNet3DConditionModel as DiffusersUNet3D

    return DiffusersUNet3D.from_pretrained(folder, **kwargs).eval()


SAVES = {
    "safetensors": {},
    "bin": {"safe_serialization": False},
    "sharded-safetensors": {"max_shard_size": "300KB"},
    "sharded-bin": {"safe_serialization": False, "max_shard_size": "300KB"},
}


@pytest.mark.parametrize("form", list(SAVES))
def test_diffusers_folders_load_to_diffusers_numbers(tmp_path, form):
    config, model, inputs, want = reference("tiny")
    model.save_pretrained(tmp_path, **SAVES[form])
    ours = UNet3DConditionModel.from_pretrained(tmp_path)
    assert rel_err(forward(ours, inputs), want) < 1e-5
    assert dict(ours.config)["block_out_channels"] == tuple(config["block_out_channels"])


def test_fp16_variant_loads_like_diffusers(tmp_path):
    config, model, inputs, _ = reference("odd")
    half = type(model)(**config).eval()
    half.load_state_dict(model.state_dict())
    half.half().save_pretrained(tmp_path, variant="fp16")
    oracle = forward(_diffusers_load(tmp_path, variant="fp16", torch_dtype=torch.float32), inputs)
    ours = UNet3DConditionModel.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float32)
    assert rel_err(forward(ours, inputs), oracle) < 1e-5
    kept = UNet3DConditionModel.from_pretrained(tmp_path, variant="fp16")
    assert {p.dtype for p in kept.parameters()} == {torch.float16}


def test_sharded_fp16_variant(tmp_path):
    config, model, inputs, want = reference("odd")
    model.save_pretrained(tmp_path, variant="fp16", max_shard_size="200KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    ours = UNet3DConditionModel.from_pretrained(tmp_path, variant="fp16")
    assert rel_err(forward(ours, inputs), want) < 1e-5


@pytest.mark.parametrize("library", ["diffusers", "models.unet_3d_condition"])
def test_pipeline_root_uses_its_unet(tmp_path, library):
    config, model, inputs, want = reference("odd")
    model.save_pretrained(tmp_path / "unet")
    (tmp_path / "vae").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps({
        "_class_name": "TextToVideoSDPipeline", "unet": [library, "UNet3DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}))
    assert rel_err(forward(UNet3DConditionModel.from_pretrained(tmp_path), inputs), want) < 1e-5
    assert rel_err(forward(UNet3DConditionModel.from_pretrained(tmp_path, subfolder="unet"), inputs), want) < 1e-5


def test_old_config_keys_are_ignored(tmp_path):
    config, model, inputs, want = reference("odd")
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update({"_diffusers_version": "0.15.0.dev0", "center_input_sample": False, "class_embed_type": None,
                "flip_sin_to_cos": True, "freq_shift": 0, "mid_block_type": "UNetMidBlock3DCrossAttn"})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert rel_err(forward(UNet3DConditionModel.from_pretrained(tmp_path), inputs), want) < 1e-5


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_our_save_pretrained_loads_in_diffusers(tmp_path, variant):
    config, model, inputs, want = reference("tiny")
    ours = UNet3DConditionModel.from_single_file(_save_original(tmp_path, config, model))
    weights = ours.save_pretrained(tmp_path / "out", variant=variant)
    assert weights.name == ("diffusion_pytorch_model.fp16.safetensors" if variant
                            else "diffusion_pytorch_model.safetensors")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["_class_name"] == "UNet3DConditionModel"
    oracle = _diffusers_load(tmp_path / "out", variant=variant)
    assert rel_err(forward(oracle, inputs), want) < 1e-5
    again = UNet3DConditionModel.from_pretrained(tmp_path / "out", variant=variant)
    assert rel_err(forward(again, inputs), want) < 1e-5


def _save_original(tmp_path, config, model):
    path = tmp_path / "text2video_pytorch_model.pth"
    torch.save(diffusers_to_original(model.state_dict(), config), path)
    return path


def test_convert_cli_original_to_diffusers_folder(tmp_path, capsys):
    config, model, inputs, want = reference("tiny")
    src = _save_original(tmp_path, config, model)
    assert convert_main([str(src), str(tmp_path / "fp32")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert rel_err(forward(_diffusers_load(tmp_path / "fp32"), inputs), want) < 1e-5
    assert convert_main([str(src), str(tmp_path / "fp16"), "--dtype", "fp16", "--variant", "fp16"]) == 0
    stored = load_file(tmp_path / "fp16" / "diffusion_pytorch_model.fp16.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    assert len(stored) == len(model.state_dict())


def test_convert_cli_reports_errors_and_help(tmp_path, capsys):
    bad = tmp_path / "empty.pth"
    bad.write_bytes(b"")
    assert convert_main([str(bad), str(tmp_path / "out")]) == 1
    assert "empty.pth is empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as done:
        convert_main(["--help"])
    usage = capsys.readouterr().out
    assert done.value.code == 0 and "python -m unet3d.convert" in usage
    assert "--config" in usage and "--dtype" in usage and "--variant" in usage


def test_converted_fixture_loads_in_diffusers_to_original_output(tmp_path):
    ms = FIXTURES / "modelscope"
    assert convert_main([str(ms / "tiny_ms_text2video_pytorch_model.pth"), str(tmp_path / "unet")]) == 0
    io = load_file(ms / "tiny_ms_io.safetensors")
    oracle = _diffusers_load(tmp_path / "unet", torch_dtype=torch.float32)
    got = forward(oracle, {k: io[k] for k in ("sample", "timestep", "encoder_hidden_states")})
    assert rel_err(got, io["expected"]) < 2e-4


def test_modelscope_release_folder_loads_its_pth(tmp_path):
    """The folder layout ModelScope / Zeroscope publish (and the A1111 extension uses): no config.json."""
    config, model, inputs, want = reference("tiny")
    _save_original(tmp_path, config, model)
    (tmp_path / "configuration.json").write_text(json.dumps({"framework": "pytorch", "task": "text-to-video"}))
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(b"not read")
    assert rel_err(forward(UNet3DConditionModel.from_pretrained(tmp_path), inputs), want) < 1e-5
    assert convert_main([str(tmp_path), str(tmp_path / "diffusers")]) == 0
    assert rel_err(forward(_diffusers_load(tmp_path / "diffusers"), inputs), want) < 1e-5


def test_default_weight_files_prefer_plain_weights_then_the_variant(tmp_path):
    """What the ComfyUI loader reads from a diffusers folder: never a plain file and a variant together."""
    from unet3d.checkpoints.folders import default_weight_files

    (tmp_path / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"x")
    assert [p.name for p in default_weight_files(tmp_path)] == ["diffusion_pytorch_model.fp16.safetensors"]
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    assert [p.name for p in default_weight_files(tmp_path)] == ["diffusion_pytorch_model.safetensors"]
