"""Hostile checkpoint files, configs, LoRAs and command lines against the Python API (``hostile_files.py`` builds
them): each is refused with the exact kind of ``unet3d.errors`` error, naming the file or value and what was found,
never with a raw KeyError/TypeError/OSError, never by running code from the file, and before anything sized by the
file's numbers is allocated. (The estimate route and the nodes in a real ComfyUI: test_robustness_route.py and
host/test_host_robustness.py.)"""
import json
import math
import os

import pytest
import torch
from helpers_checkpoint import TINY_ODD, one_thread
from hostile_files import (
    BAD_ENTRIES,
    bad_entry_file,
    code_running_pickle,
    deeply_nested_header,
    header_only,
    raw_safetensors,
    unet_shapes,
)
from safetensors.torch import save_file

from unet3d import UNet3DConditionModel
from unet3d.checkpoints.summary import summarize_checkpoint
from unet3d.convert import main as convert_main
from unet3d.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    LoraError,
    SettingError,
    UnsafeCheckpointError,
)

load = UNet3DConditionModel.from_single_file


@pytest.fixture(scope="module")
def tiny():
    with one_thread():
        return UNet3DConditionModel(**TINY_ODD).eval()


# ---- damaged safetensors headers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(BAD_ENTRIES))
@pytest.mark.parametrize("reader", [load, summarize_checkpoint], ids=["load", "summary"])
def test_damaged_header_entries_are_refused_naming_file_and_entry(tmp_path, kind, reader):
    path = bad_entry_file(tmp_path / f"{kind}.safetensors", kind)
    with pytest.raises(CorruptCheckpointError) as err:
        reader(path)
    assert str(path) in str(err.value) and BAD_ENTRIES[kind][1] in str(err.value)
    assert "'conv_in.weight'" in str(err.value)


def test_deeply_nested_header_is_refused_before_parsing(tmp_path):
    path = deeply_nested_header(tmp_path / "deep.safetensors", depth=200_000)
    with pytest.raises(CorruptCheckpointError, match=r"deep\.safetensors .*nests deeper than 4 levels"):
        load(path)


def test_header_length_past_the_end_and_a_non_object_header(tmp_path):
    with open(tmp_path / "long.safetensors", "wb") as f:
        f.write((2**63).to_bytes(8, "little") + b"{}")
    with pytest.raises(CorruptCheckpointError, match="header length field says 9223372036854775808 bytes"):
        load(tmp_path / "long.safetensors")
    raw_safetensors(tmp_path / "list.safetensors", raw=b"{" + b"}"[:0] + b'"a": 1}')
    with pytest.raises(CorruptCheckpointError, match=r"header entry 'a' is a int"):
        load(tmp_path / "list.safetensors")


def test_a_header_length_starting_with_0x80_is_still_safetensors(tmp_path, tiny):
    """The sniffer must not take the length's first byte for a pickle opcode."""
    sd = tiny.state_dict()
    path = tmp_path / "w.safetensors"
    for pad in range(300):  # pad the metadata until the header length ends in 0x80
        save_file(sd, path, metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    loaded = load(path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())


# ---- pickles ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "plain"])
def test_code_running_pickle_renamed_safetensors_is_refused_and_never_runs(tmp_path, zip_format):
    marker = tmp_path / "PWNED"
    path = code_running_pickle(tmp_path / "model.safetensors", marker, zip_format)
    with pytest.raises(UnsafeCheckpointError, match=r"model\.safetensors.*Nothing from it was executed"):
        load(path)
    assert not marker.exists()


def test_a_plain_pickle_renamed_safetensors_still_loads(tmp_path, tiny):
    torch.save(tiny.state_dict(), tmp_path / "renamed.safetensors")
    loaded = load(tmp_path / "renamed.safetensors")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tiny.state_dict().items())


# ---- paths -----------------------------------------------------------------------------------------------------------
def test_unusable_paths_are_named(tmp_path):
    long_name = tmp_path / ("a" * 300 + ".safetensors")
    for call in (load, UNet3DConditionModel.from_pretrained, summarize_checkpoint):
        with pytest.raises(CheckpointNotFoundError, match="a name in it is 312 bytes long"):
            call(long_name)
    with pytest.raises(CheckpointNotFoundError, match="contains a NUL byte"):
        load(str(tmp_path / "x\0y.safetensors"))
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(CheckpointNotFoundError, match="cannot be opened"):
        load(tmp_path / "loop" / "model.safetensors")


# ---- shard indexes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight_map, words", [
    ([["conv_in.weight", "a.safetensors"]], "'weight_map' must be a non-empty object"),
    ({}, "'weight_map' must be a non-empty object"),
    ({"conv_in.weight": 5}, "must be a shard file name"),
    ({"conv_in.weight": "../../../etc/passwd"}, "outside its folder ('../../../etc/passwd')"),
    ({"conv_in.weight": "/etc/passwd"}, "outside its folder ('/etc/passwd')"),
], ids=["list", "empty", "number", "traversal", "absolute"])
def test_hostile_shard_indexes_are_refused_without_opening_anything(tmp_path, weight_map, words):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel", **TINY_ODD}))
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError) as err:
        UNet3DConditionModel.from_pretrained(tmp_path)
    assert str(index) in str(err.value) and words in str(err.value)
    assert "root:" not in str(err.value)


# ---- config.json -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, words", [
    ({"block_out_channels": 5}, "`block_out_channels`=5: must be a list with one entry per level"),
    ({"block_out_channels": [1_000_000] * 2}, "`block_out_channels` asks for 1000000 channels in a level"),
    ({"layers_per_block": 10**9}, "`layers_per_block` asks for 1000000000 layers per block"),
    ({"cross_attention_dim": 2**40}, "`cross_attention_dim` asks for 1099511627776 channels"),
    ({"norm_eps": "small"}, "`norm_eps`='small': must be > 0"),
    ({"act_fn": ["silu"]}, "`act_fn`=['silu']: must be one of"),
], ids=["width-number", "million-channels", "billion-layers", "huge-text", "eps-text", "act-list"])
def test_absurd_config_json_is_refused_before_any_weight_is_read(tmp_path, override, words):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel", **TINY_ODD, **override}))
    header_only(folder / "diffusion_pytorch_model.safetensors", unet_shapes(**TINY_ODD))
    for call in (UNet3DConditionModel.from_pretrained, summarize_checkpoint):
        with pytest.raises(CheckpointError) as err:
            call(folder)
        assert str(folder / "config.json") in str(err.value) and words in str(err.value)


# ---- LoRA ------------------------------------------------------------------------------------------------------------
def _lora(model, rank=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in model.named_parameters():
        if name.endswith(("attn1.to_q.weight", "attn2.to_v.weight")):
            module = name[:-len(".weight")]
            sd[f"{module}.lora_A.weight"] = torch.randn(rank, p.shape[1], generator=gen) * 0.01
            sd[f"{module}.lora_B.weight"] = torch.randn(p.shape[0], rank, generator=gen) * 0.01
    return sd


def _spoiled(model, what):
    sd = _lora(model)
    key = sorted(k for k in sd if k.endswith("lora_B.weight"))[0]
    module = key[:-len(".lora_B.weight")]
    if what == "nan":
        sd[key][0, 0] = math.nan
    elif what == "inf":
        sd[key][0, 0] = math.inf
    elif what == "alpha-nan":
        sd[f"{module}.alpha"] = torch.tensor(math.nan)
    elif what == "alpha-vector":
        sd[f"{module}.alpha"] = torch.ones(3)
    elif what == "rank-zero":
        sd[key], sd[f"{module}.lora_A.weight"] = sd[key][:, :0], sd[f"{module}.lora_A.weight"][:0]
    elif what == "vector-factor":
        sd[key] = sd[key][:, 0]
    elif what == "integer-factor":
        sd[key] = sd[key].to(torch.int32)
    return sd, key


@pytest.mark.parametrize("what, words", [
    ("nan", "NaN or infinite"), ("inf", "NaN or infinite"), ("alpha-nan", "should be one finite number"),
    ("alpha-vector", "should be one finite number"), ("rank-zero", "of rank >= 1"),
    ("vector-factor", "floating-point matrix"), ("integer-factor", "floating-point matrix")])
def test_damaged_lora_factors_are_refused_naming_file_and_key(tmp_path, tiny, what, words):
    sd, key = _spoiled(tiny, what)
    path = tmp_path / f"{what}.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    with pytest.raises(LoraError) as err:
        tiny.load_lora(path)
    message = str(err.value)
    assert str(path) in message and words in message
    assert key.rsplit(".lora_", 1)[0] in message, "the message names the entry"
    assert all(torch.equal(tiny.state_dict()[k], v) for k, v in before.items()), "no weight may change"


@pytest.mark.parametrize("strength", [math.nan, math.inf, -math.inf, 1e30, -11, "1", True, None])
def test_lora_strength_must_be_a_finite_number_in_range(tmp_path, tiny, strength):
    save_file(_lora(tiny), tmp_path / "good.safetensors")
    with pytest.raises(SettingError, match="LoRA strength must be a finite number from -10.0 to 10.0"):
        tiny.load_lora(tmp_path / "good.safetensors", strength=strength)
    assert not getattr(tiny, "_lora_originals", None)


def test_lora_pickle_that_runs_code_is_refused(tmp_path, tiny):
    marker = tmp_path / "PWNED"
    path = code_running_pickle(tmp_path / "evil.pt", marker, zip_format=False)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt"):
        tiny.load_lora(path)
    assert not marker.exists()


# ---- python -m unet3d.convert -------------------------------------------------------------------------------------
def test_convert_refuses_bad_outputs_cleanly_and_replaces_its_own_files(tmp_path, tiny, capsys):
    source = tmp_path / "in.safetensors"
    save_file(tiny.state_dict(), source)
    (tmp_path / "a-file").write_text("keep me")
    cases = {str(tmp_path / "a-file"): "is an existing file; give a folder",
             str(tmp_path / ("o" * 300)): "a name in it is 300 bytes long",
             str(tmp_path / "missing.safetensors"): "does not exist"}
    for output, words in cases.items():
        argv = [str(source), output] if "missing" not in output else [output, str(tmp_path / "out")]
        assert convert_main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and "Traceback" not in err, err
    assert convert_main([str(source), str(tmp_path / "out"), "--variant", "../../x"]) == 1
    assert "must be a plain name" in capsys.readouterr().err
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text("{}")
    for _ in range(2):
        assert convert_main([str(source), str(out)]) == 0
    assert (out / "notes.txt").read_text() == "mine" and json.loads((out / "config.json").read_text())["in_channels"]
    assert sorted(os.listdir(out)) == ["config.json", "diffusion_pytorch_model.safetensors", "notes.txt"]


def test_a_file_promising_more_tensor_data_than_the_machine_has_is_refused_before_reading(tmp_path):
    from unet3d.checkpoints.safe_io import machine_memory
    from unet3d.errors import MemoryLimitError
    memory = machine_memory()
    elements = (2 * memory) // 2 + 1
    path = raw_safetensors(tmp_path / "sparse.safetensors", {"conv_in.weight": {
        "dtype": "F16", "shape": [elements], "data_offsets": [0, 2 * elements]}}, 2 * elements)  # sparse: no disk
    with pytest.raises(MemoryLimitError, match=r"sparse\.safetensors holds .* GB of tensors, more than the"):
        load(path)


def test_json_nesting_is_measured_as_the_parser_nests():
    """The depth bound is checked on the text before parsing; it must agree with the nesting json.loads builds,
    brackets and escaped quotes inside strings included."""
    import random

    from unet3d.bounded_json import json_depth

    def parsed_depth(value):
        if isinstance(value, (list, dict)):
            children = value.values() if isinstance(value, dict) else value
            return 1 + max((parsed_depth(c) for c in children), default=0)
        return 0
    rng = random.Random(0)

    def make(level):
        pick = rng.random()
        if level > 7 or pick < 0.3:
            return rng.choice([1, 2.5, None, True, 'a[b{"\\', 'x]]}\\\\', "é😀", ""])
        if pick < 0.65:
            return [make(level + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(["k", "[", '}"', "\\"]) + str(i): make(level + 1) for i in range(rng.randint(0, 3))}
    for _ in range(2000):
        text = json.dumps(make(0), ensure_ascii=rng.random() < 0.5)
        assert json_depth(text) == parsed_depth(json.loads(text)), text
