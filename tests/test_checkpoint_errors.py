"""Bad input: unsafe pickles, broken files, wrong folders, other model families, mismatched keys and shapes.
Every error must name the file and say what is wrong."""
import json

import pytest
import torch
from helpers_checkpoint import diffusers_to_original, reference, single_thread  # noqa: F401 (fixture)
from hostile_files import CodePayload, code_running_pickle
from safetensors.torch import save_file

from unet3d import UNet3DConditionModel
from unet3d.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    StateDictMismatchError,
    UnsafeCheckpointError,
    WrongModelError,
)

pytestmark = pytest.mark.usefixtures("single_thread")
load = UNet3DConditionModel.from_single_file




@pytest.mark.parametrize("name,zip_format", [("evil.pth", True), ("evil.ckpt", True), ("evil.bin", False),
                                             ("evil.pt", False)])
def test_code_running_pickle_is_refused_and_never_runs(tmp_path, name, zip_format):
    marker = tmp_path / "PWNED"
    path = code_running_pickle(tmp_path / name, marker, zip_format)
    with pytest.raises(UnsafeCheckpointError) as err:
        load(path)
    assert not marker.exists()
    message = str(err.value)
    assert str(path) in message and "safetensors" in message and "Nothing from it was executed" in message
    if zip_format:  # the refused global is named (plain pickles trip first on torch's own _load_from_bytes)
        assert "io.open" in message


def test_unsafe_pickle_inside_diffusers_folder_is_refused(tmp_path):
    config, model, _, _ = reference("odd")
    model.save_pretrained(tmp_path, safe_serialization=False)
    marker = tmp_path / "PWNED"
    torch.save({**model.state_dict(), "x": CodePayload(marker)}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="diffusion_pytorch_model.bin"):
        UNet3DConditionModel.from_pretrained(tmp_path)
    assert not marker.exists()


def _valid_files(tmp_path):
    sd = reference("odd")[1].state_dict()
    save_file(sd, tmp_path / "good.safetensors")
    torch.save(sd, tmp_path / "good.pth")
    return tmp_path / "good.safetensors", tmp_path / "good.pth"


@pytest.mark.parametrize("which,keep", [("safetensors", 0.5), ("safetensors", 20), ("safetensors", 4),
                                        ("pth", 0.5), ("pth", 100)])
def test_truncated_files(tmp_path, which, keep):
    good = _valid_files(tmp_path)[0 if which == "safetensors" else 1]
    data = good.read_bytes()
    cut = tmp_path / f"cut.{which}"
    cut.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(CorruptCheckpointError) as err:
        load(cut)
    assert str(cut) in str(err.value) and ("truncated" in str(err.value) or "corrupt" in str(err.value))


def test_corrupt_safetensors_header(tmp_path):
    good = _valid_files(tmp_path)[0]
    data = bytearray(good.read_bytes())
    data[10:20] = b"\x00" * 10
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="bad.safetensors"):
        load(bad)


def test_empty_and_non_model_files(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match=r"empty\.safetensors is empty \(0 bytes\)"):
        load(empty)
    html = tmp_path / "download.pth"
    html.write_text("<!DOCTYPE html><html>Rate limited</html>")
    with pytest.raises(CorruptCheckpointError, match="download.pth is neither"):
        load(html)


def test_missing_paths(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="nope.pth does not exist"):
        load(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope_dir does not exist"):
        UNet3DConditionModel.from_pretrained(tmp_path / "nope_dir")
    with pytest.raises(CheckpointError, match="is a folder"):
        load(tmp_path)
    weights = tmp_path / "unet.safetensors"
    save_file(reference("odd")[1].state_dict(), weights)
    with pytest.raises(CheckpointError, match="unet.safetensors is a file.*from_single_file"):
        UNet3DConditionModel.from_pretrained(weights)


def test_folder_without_weights_lists_what_it_found(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel"}))
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(CheckpointNotFoundError) as err:
        UNet3DConditionModel.from_pretrained(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "README.md" in message and "diffusion_pytorch_model.safetensors" in message
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointNotFoundError, match="has no config.json"):
        UNet3DConditionModel.from_pretrained(tmp_path)


def test_variant_errors(tmp_path):
    model = reference("odd")[1]
    model.save_pretrained(tmp_path / "fp16only", variant="fp16")
    with pytest.raises(CheckpointNotFoundError, match="only has variant weights \\(fp16\\); pass variant='fp16'"):
        UNet3DConditionModel.from_pretrained(tmp_path / "fp16only")
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(CheckpointNotFoundError, match="no 'bf16' variant.*default"):
        UNet3DConditionModel.from_pretrained(tmp_path / "plain", variant="bf16")


def test_missing_shard_is_named(tmp_path):
    model = reference("odd")[1]
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    shard = sorted(tmp_path.glob("*-00002-of-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointNotFoundError, match=shard.name):
        UNet3DConditionModel.from_pretrained(tmp_path)


# ---- other model families ----------------------------------------------------------------------------------------

def _fake(keys):
    return {k: torch.zeros(shape) for k, shape in keys.items()}


def _sd15_ldm():
    p = "model.diffusion_model."
    return _fake({p + "time_embed.0.weight": (1280, 320), p + "input_blocks.0.0.weight": (320, 4, 3, 3),
                  p + "input_blocks.1.0.in_layers.0.weight": (320,),
                  p + "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
                  p + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
                  p + "middle_block.0.in_layers.0.weight": (1280,), p + "out.2.weight": (4, 320, 3, 3),
                  "first_stage_model.encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
                  "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (10, 768)})


def _sd15_diffusers():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=768,
                                norm_num_groups=32, attention_head_dim=8, sample_size=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).state_dict()


def _sdxl_ldm():
    return _fake({"label_emb.0.0.weight": (1280, 2816), "input_blocks.0.0.weight": (320, 4, 3, 3),
                  "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048)})


def _svd_diffusers():
    from diffusers import UNetSpatioTemporalConditionModel

    return UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
        num_attention_heads=(2, 4), addition_time_embed_dim=8, projection_class_embeddings_input_dim=24).state_dict()


def _svd_sgm():
    p = "model.diffusion_model."
    return _fake({p + "input_blocks.1.0.time_stack.in_layers.0.weight": (320,),
                  p + "input_blocks.0.0.weight": (320, 8, 3, 3), p + "input_blocks.1.0.time_mixer.mix_factor": (1,),
                  p + "input_blocks.1.0.in_layers.0.weight": (320,)})


def _animatediff():
    t = "down_blocks.0.motion_modules.0.temporal_transformer."
    return _fake({t + "norm.weight": (320,), t + "proj_in.weight": (320, 320),
                  t + "transformer_blocks.0.attention_blocks.0.to_q.weight": (320, 320),
                  "mid_block.motion_modules.0.temporal_transformer.proj_out.weight": (1280, 1280)})


def _vae_diffusers():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32,), norm_num_groups=32, latent_channels=4).state_dict()


def _vae_original():
    return _fake({"encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3), "encoder.conv_in.weight": (128, 3, 3, 3),
                  "quant_conv.weight": (8, 8, 1, 1), "decoder.up.0.block.0.conv1.weight": (128, 128, 3, 3)})


def _open_clip():
    return _fake({"transformer.resblocks.0.attn.in_proj_weight": (3072, 1024), "token_embedding.weight": (10, 1024),
                  "positional_embedding": (77, 1024)})


def _lora():
    return _fake({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320),
                  "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": ()})


FAMILIES = {
    "sd15-ldm-full-checkpoint": (_sd15_ldm, r"image UNet \(SD1\.x"),
    "sd15-diffusers": (_sd15_diffusers, r"image UNet \(SD1\.x UNet2DConditionModel in diffusers names"),
    "sdxl-ldm": (_sdxl_ldm, r"image UNet \(SDXL"),
    "svd-diffusers": (_svd_diffusers, "Stable Video Diffusion"),
    "svd-sgm": (_svd_sgm, "Stable Video Diffusion"),
    "animatediff-motion-module": (_animatediff, "AnimateDiff motion module"),
    "vae-diffusers": (_vae_diffusers, "VAE"),
    "vae-original": (_vae_original, "VAE"),
    "open-clip-text-encoder": (_open_clip, "text encoder"),
    "lora": (_lora, "LoRA"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_other_model_families_are_named(tmp_path, family):
    make, pattern = FAMILIES[family]
    path = tmp_path / f"{family}.safetensors"
    save_file({k: v.contiguous() for k, v in make().items()}, path)
    with pytest.raises(WrongModelError, match=pattern) as err:
        load(path)
    message = str(err.value)
    assert str(path) in message and "This loader expects a UNet3DConditionModel" in message


def test_pipeline_with_image_unet_is_named(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(WrongModelError, match="StableDiffusionPipeline whose unet is a UNet2DConditionModel"):
        UNet3DConditionModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(WrongModelError, match="describes a AutoencoderKL"):
        UNet3DConditionModel.from_pretrained(tmp_path)


# ---- key / shape mismatches ------------------------------------------------------------------------------------

def test_shape_mismatch_lists_keys_with_both_shapes(tmp_path):
    config, model, _, _ = reference("odd")
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "cross_attention_dim": 20}))
    with pytest.raises(StateDictMismatchError) as err:
        UNet3DConditionModel.from_pretrained(tmp_path)
    message = str(err.value)
    assert "shape mismatches (file vs model)" in message and str(tmp_path) in message
    assert "attn2.to_k.weight: (32, 16) vs (32, 20)" in message


def test_missing_and_unexpected_keys_listed_with_shapes(tmp_path):
    sd = dict(reference("odd")[1].state_dict())
    del sd["down_blocks.0.attentions.0.proj_out.bias"], sd["conv_norm_out.weight"]
    sd["down_blocks.0.resnets.0.extra.weight"] = torch.zeros(3, 5)
    path = tmp_path / "edited.safetensors"
    save_file(sd, path)
    with pytest.raises(StateDictMismatchError) as err:
        load(path)
    message = str(err.value)
    assert "2 missing keys" in message and "conv_norm_out.weight (32)" in message
    assert "down_blocks.0.attentions.0.proj_out.bias (32)" in message
    assert "1 unexpected keys" in message and "down_blocks.0.resnets.0.extra.weight (3, 5)" in message


def test_inconsistent_shapes_without_config_ask_for_one(tmp_path):
    sd = dict(reference("odd")[1].state_dict())
    sd["down_blocks.0.resnets.0.conv1.weight"] = torch.zeros(3, 5, 3, 3)
    path = tmp_path / "odd.safetensors"
    save_file(sd, path)
    with pytest.raises(CheckpointError, match=r"inferred from the tensor shapes of .*odd\.safetensors.*pass config="):
        load(path)


def test_unknown_original_layout_keys_are_listed(tmp_path):
    config, model, _, _ = reference("odd")
    original = diffusers_to_original(model.state_dict(), config)
    original["input_blocks.1.5.mystery.weight"] = torch.zeros(2, 2)
    path = tmp_path / "variant.pth"
    torch.save(original, path)
    with pytest.raises(CheckpointError, match=r"1 keys of the original ModelScope layout.*mystery\.weight \(2, 2\)"):
        load(path)


def test_invalid_explicit_config_is_reported(tmp_path):
    path = tmp_path / "u.safetensors"
    save_file(reference("odd")[1].state_dict(), path)
    with pytest.raises(CheckpointError, match="norm_num_groups"):
        load(path, config={"block_out_channels": [32, 64], "norm_num_groups": 7,
                           "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
                           "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"]})
