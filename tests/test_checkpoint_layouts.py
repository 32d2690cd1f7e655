"""Single-file checkpoints in every layout users download: the original ModelScope layout (fixture + round trips),
diffusers names, wrappers, prefixes, file formats, storage dtypes, and config inference from shapes."""
import json

import pytest
import torch
from helpers_checkpoint import (  # noqa: F401
    FIXTURES,
    TINY_ODD,
    count_temporal_transformers,
    diffusers_model,
    diffusers_to_original,
    forward,
    inputs_for,
    reference,
    rel_err,
    single_thread,
)
from safetensors.torch import load_file, save_file

from unet3d import UNet3DConditionModel
from unet3d.checkpoints.config_inference import infer_config
from unet3d.checkpoints.layouts import ORIGINAL, original_to_diffusers, strip_prefix, unwrap

MS = FIXTURES / "modelscope"
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def fixture_dir():
    return MS


def _fixture_error(model, fixture_dir) -> float:
    io = load_file(fixture_dir / "tiny_ms_io.safetensors")
    got = forward(model, {k: io[k] for k in ("sample", "timestep", "encoder_hidden_states")})
    return rel_err(got, io["expected"])


@pytest.mark.parametrize("kwargs", [{}, {"attention_head_dim": 8}], ids=["inferred-heads", "head-dim-8"])
def test_fixture_loads_without_config_and_matches_original_output(fixture_dir, kwargs):
    model = UNet3DConditionModel.from_single_file(fixture_dir / "tiny_ms_text2video_pytorch_model.pth",
                                                  torch_dtype=torch.float32, **kwargs)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert _fixture_error(model, fixture_dir) < 2e-4


def test_fixture_inferred_config_equals_published_diffusers_config(fixture_dir):
    want = json.loads((fixture_dir / "tiny_ms.json").read_text())["diffusers_config"]
    model = UNet3DConditionModel.from_single_file(fixture_dir / "tiny_ms_text2video_pytorch_model.pth")
    for key, value in want.items():
        got = model.config[key]
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    assert model.config.time_cond_proj_dim is None and model.config.norm_eps == 1e-5
    assert next(model.parameters()).dtype == torch.float16  # stored dtype kept without torch_dtype


@pytest.mark.parametrize("where", ["file", "pipeline-root", "dict"])
def test_fixture_with_explicit_config(fixture_dir, tmp_path, where):
    cfg = json.loads((fixture_dir / "tiny_ms.json").read_text())["diffusers_config"]
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel", **cfg}))
    config = {"file": tmp_path / "unet" / "config.json", "pipeline-root": tmp_path, "dict": cfg}[where]
    model = UNet3DConditionModel.from_single_file(fixture_dir / "tiny_ms_text2video_pytorch_model.pth",
                                                  config=config, torch_dtype=torch.float32)
    assert _fixture_error(model, fixture_dir) < 2e-4


def test_reference_converter_reproduces_fixture_layout(fixture_dir):
    """The test-local diffusers->original converter yields exactly the real layout (names and shapes)."""
    cfg = json.loads((fixture_dir / "tiny_ms.json").read_text())["diffusers_config"]
    ours = diffusers_to_original(diffusers_model(cfg).state_dict(), cfg)
    real = torch.load(fixture_dir / "tiny_ms_text2video_pytorch_model.pth", weights_only=True, mmap=True)
    assert set(ours) == set(real)
    assert all(tuple(ours[k].shape) == tuple(real[k].shape) for k in real)


# ---- round trips through the original layout ---------------------------------------------------------------------

@pytest.fixture(params=["tiny", "odd"], ids=["3-levels", "2-levels"])
def ref(request):
    return reference(request.param)


def test_original_mapping_is_exact_inverse(ref):
    config, model, _, _ = ref
    sd = model.state_dict()
    original = diffusers_to_original(sd, config)
    squeezed = [k for k, v in original.items() if v.ndim == 3 and k.endswith(("proj_in.weight", "proj_out.weight"))]
    assert len(squeezed) == 2 * count_temporal_transformers(sd)
    back = original_to_diffusers(original)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


WRAPPERS = {
    "plain": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 3, "global_step": 100},
    "module": lambda sd: {"module": sd},
    "single-key": lambda sd: {"ema": sd},
    "model.diffusion_model.": lambda sd: {f"model.diffusion_model.{k}": v for k, v in sd.items()},
    "diffusion_model.": lambda sd: {f"diffusion_model.{k}": v for k, v in sd.items()},
    "unet.": lambda sd: {f"unet.{k}": v for k, v in sd.items()},
    "lightning+prefix": lambda sd: {"state_dict": {f"model.diffusion_model.{k}": v for k, v in sd.items()}},
    "full-checkpoint": lambda sd: {**{f"model.diffusion_model.{k}": v for k, v in sd.items()},
                                   "first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
                                   "cond_stage_model.model.token_embedding.weight": torch.zeros(10, 8)},
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_wrapped_and_prefixed_single_files(tmp_path, wrapper, layout):
    config, model, inputs, want = reference("tiny")
    sd = model.state_dict()
    sd = diffusers_to_original(sd, config) if layout == "original" else sd
    path = tmp_path / "unet.pth"
    torch.save(WRAPPERS[wrapper](sd), path)
    loaded = UNet3DConditionModel.from_single_file(path, attention_head_dim=None)
    assert rel_err(forward(loaded, inputs), want) < 1e-5


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt", ".bin", ".pt", "-legacy.pth"])
def test_original_layout_in_every_file_format(ref, tmp_path, suffix):
    config, model, inputs, want = ref
    original = {k: v.contiguous() for k, v in diffusers_to_original(model.state_dict(), config).items()}
    path = tmp_path / f"text2video_pytorch_model{suffix}"
    if suffix == ".safetensors":
        save_file(original, path)
    else:
        torch.save(original, path, _use_new_zipfile_serialization=suffix != "-legacy.pth")
    loaded = UNet3DConditionModel.from_single_file(path)
    assert rel_err(forward(loaded, inputs), want) < 1e-5


UNUSUAL = {  # geometries no published model has, to make sure nothing in the mapping assumes the 1.7B layout
    "attention-only-deep": dict(down_block_types=("DownBlock3D", "CrossAttnDownBlock3D"),
                                up_block_types=("CrossAttnUpBlock3D", "UpBlock3D"), block_out_channels=(32, 64),
                                layers_per_block=1, cross_attention_dim=8, attention_head_dim=4),
    "single-level-3-layers": dict(down_block_types=("CrossAttnDownBlock3D",), up_block_types=("CrossAttnUpBlock3D",),
                                  block_out_channels=(32,), layers_per_block=3, cross_attention_dim=8,
                                  attention_head_dim=16, in_channels=2, out_channels=6),
}


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_unusual_geometries_round_trip_through_original_layout(tmp_path, name):
    config = UNUSUAL[name]
    model = diffusers_model(config)
    torch.save(diffusers_to_original(model.state_dict(), config), tmp_path / "u.pth")
    loaded = UNet3DConditionModel.from_single_file(tmp_path / "u.pth")
    for key, value in config.items():
        got = loaded.config[key]
        assert (tuple(got) if isinstance(got, (list, tuple)) else got) == value, key
    inputs = inputs_for(config)
    assert rel_err(forward(loaded, inputs), forward(model, inputs)) < 1e-5


def test_inferred_config_matches_reference(ref):
    config, model, _, _ = ref
    sd = model.state_dict()
    for state in (sd, original_to_diffusers(diffusers_to_original(sd, config))):
        inferred = infer_config(state)
        assert inferred.pop("sample_size") == 32  # not in the weights; the published configs' value
        for key, value in inferred.items():
            want = config.get(key)
            assert (list(value) if isinstance(value, (list, tuple)) else value) == \
                   (list(want) if isinstance(want, (list, tuple)) else want), key


def test_time_cond_projection_inferred_and_loaded(tmp_path):
    config, model, inputs, want = reference("timecond")
    save_file(model.state_dict(), tmp_path / "u.safetensors")
    loaded = UNet3DConditionModel.from_single_file(tmp_path / "u.safetensors")
    assert loaded.config.time_cond_proj_dim == config["time_cond_proj_dim"] == 12
    assert rel_err(forward(loaded, inputs), want) < 1e-5


def test_head_size_override_changes_geometry(ref, tmp_path):
    config, model, _, _ = ref
    path = tmp_path / "u.safetensors"
    save_file(model.state_dict(), path)
    assert UNet3DConditionModel.from_single_file(path).config.attention_head_dim == config["attention_head_dim"]
    with pytest.raises(ValueError, match="transformer_in"):  # 8 heads x 4 != stored transformer_in width
        UNet3DConditionModel.from_single_file(path, attention_head_dim=4)


# ---- storage dtypes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_storage_dtype_kept_or_cast(tmp_path, dtype, suffix):
    model = diffusers_model(TINY_ODD)
    stored = {k: v.to(dtype) for k, v in model.state_dict().items()}
    path = tmp_path / f"u{suffix}"
    save_file(stored, path) if suffix == ".safetensors" else torch.save(stored, path)
    kept = UNet3DConditionModel.from_single_file(path)
    assert {p.dtype for p in kept.parameters()} == {dtype}
    assert torch.equal(kept.state_dict()["conv_in.weight"].float(), stored["conv_in.weight"].float())
    cast = UNet3DConditionModel.from_single_file(path, torch_dtype=torch.float32)
    assert {p.dtype for p in cast.parameters()} == {torch.float32}
    assert torch.equal(cast.state_dict()["conv_out.weight"], stored["conv_out.weight"].float())
    # the fp32 model built from low-precision weights computes like diffusers given the same rounded weights
    model.load_state_dict({k: v.float() for k, v in stored.items()})
    inputs = inputs_for(TINY_ODD)
    assert rel_err(forward(cast, inputs), forward(model, inputs)) < 1e-5


def test_weights_are_assigned_not_copied(tmp_path, monkeypatch):
    """The model's parameters are the very tensors read from the file (no second copy of the weights)."""
    import unet3d.checkpoints.state_dict as checkpoint

    read = diffusers_model(TINY_ODD).state_dict()
    monkeypatch.setattr(checkpoint, "read_weight_file", lambda path: read)
    (tmp_path / "u.safetensors").write_bytes(b"unused")
    loaded = UNet3DConditionModel.from_single_file(tmp_path / "u.safetensors")
    params = dict(loaded.named_parameters())
    assert all(params[k].data_ptr() == read[k].data_ptr() for k in read)


def test_editing_a_memory_mapped_model_never_writes_the_file(tmp_path):
    """Zip .pth files are memory-mapped copy-on-write: in-place edits (LoRA merges) must not reach the user's file."""
    path = tmp_path / "u.pth"
    torch.save(reference("odd")[1].state_dict(), path)
    before = path.read_bytes()
    model = UNet3DConditionModel.from_single_file(path)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    del model
    assert path.read_bytes() == before


def test_helpers_reject_unknown_layout():
    sd, prefix = strip_prefix({"first_stage_model.x": torch.zeros(1)})
    assert prefix is None and list(sd) == ["first_stage_model.x"]
    assert list(unwrap({"a": {"b": {"conv_in.weight": torch.zeros(1)}}}, "x")) == ["conv_in.weight"]
    assert ORIGINAL == "original"


# ---- the full ModelScope 1.7B / Zeroscope geometry, on meta tensors (no memory) --------------------------------

SPEC_EXAMPLES = [  # keys of the real ModelScope 1.7B release: original key, shape, diffusers key, shape
    ("time_embed.0.weight", (1280, 320), "time_embedding.linear_1.weight", (1280, 320)),
    ("input_blocks.0.1.proj_in.weight", (512, 320, 1), "transformer_in.proj_in.weight", (512, 320)),
    ("input_blocks.0.1.transformer_blocks.0.ff.net.0.proj.weight", (4096, 512),
     "transformer_in.transformer_blocks.0.ff.net.0.proj.weight", (4096, 512)),
    ("input_blocks.4.0.skip_connection.weight", (640, 320, 1, 1), "down_blocks.1.resnets.0.conv_shortcut.weight",
     (640, 320, 1, 1)),
    ("input_blocks.5.0.temopral_conv.conv2.3.weight", (640, 640, 3, 1, 1), "down_blocks.1.temp_convs.1.conv2.3.weight",
     (640, 640, 3, 1, 1)),
    ("input_blocks.7.1.transformer_blocks.0.attn2.to_k.weight", (1280, 1024),
     "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k.weight", (1280, 1024)),
    ("input_blocks.8.2.proj_out.weight", (1280, 1280, 1), "down_blocks.2.temp_attentions.1.proj_out.weight",
     (1280, 1280)),
    ("input_blocks.9.op.weight", (1280, 1280, 3, 3), "down_blocks.2.downsamplers.0.conv.weight", (1280, 1280, 3, 3)),
    ("middle_block.0.temopral_conv.conv1.2.weight", (1280, 1280, 3, 1, 1), "mid_block.temp_convs.0.conv1.2.weight",
     (1280, 1280, 3, 1, 1)),
    ("middle_block.3.emb_layers.1.weight", (1280, 1280), "mid_block.resnets.1.time_emb_proj.weight", (1280, 1280)),
    ("output_blocks.0.0.in_layers.0.weight", (2560,), "up_blocks.0.resnets.0.norm1.weight", (2560,)),
    ("output_blocks.2.1.conv.bias", (1280,), "up_blocks.0.upsamplers.0.conv.bias", (1280,)),
    ("output_blocks.5.3.conv.weight", (1280, 1280, 3, 3), "up_blocks.1.upsamplers.0.conv.weight", (1280, 1280, 3, 3)),
    ("output_blocks.8.1.proj_in.weight", (640, 640), "up_blocks.2.attentions.2.proj_in.weight", (640, 640)),
    ("output_blocks.11.2.transformer_blocks.0.attn2.to_v.weight", (320, 320),
     "up_blocks.3.temp_attentions.2.transformer_blocks.0.attn2.to_v.weight", (320, 320)),
    ("out.2.weight", (4, 320, 3, 3), "conv_out.weight", (4, 320, 3, 3)),
]


def test_full_size_mapping_matches_spec_examples():
    from unet3d.network.config import DEFAULTS

    sd = UNet3DConditionModel(device="meta").state_dict()
    original = diffusers_to_original(sd, dict(DEFAULTS))
    assert len(original) == len(sd) == 1480
    assert sum(v.ndim == 3 and k.endswith(("proj_in.weight", "proj_out.weight")) for k, v in original.items()) == 34
    converted = original_to_diffusers(original)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in sd.items()}
    tagged = original_to_diffusers({k: torch.tensor([i]) for i, k in enumerate(original)})  # which key went where
    index = {k: i for i, k in enumerate(original)}
    for orig_key, orig_shape, diff_key, diff_shape in SPEC_EXAMPLES:
        assert tuple(original[orig_key].shape) == orig_shape, orig_key
        assert tuple(converted[diff_key].shape) == diff_shape, diff_key
        assert tagged[diff_key].item() == index[orig_key], (orig_key, diff_key)
    inferred = infer_config(converted)
    assert inferred.pop("sample_size") == 32
    for key, value in inferred.items():
        want = DEFAULTS[key]
        assert (tuple(value) if isinstance(value, list) else value) == want, key
