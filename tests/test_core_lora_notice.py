"""The notice for core LoRA loaders (``nodes/core_lora_notice.py``): one warning per LoRA load, however quickly loads
follow each other, and none for other log lines. Reference: the bursts core's loader logs (one line per unmapped
key, in one loop)."""
import logging
import time

from comfy_runner.offline import plugin_module

notice = plugin_module("nodes.core_lora_notice")
KEYS = [f"unet.down_blocks.0.temp_attentions.0.proj_in.lora_{i}.weight" for i in "AB"] + \
       ["unet.up_blocks.3.temp_convs.0.conv1.2.lora_A.weight"]


def _notices(caplog, bursts):
    handler = notice.UnappliedLoraNotice()
    with caplog.at_level(logging.WARNING, logger="unet3d"):
        caplog.clear()
        for keys, pause in bursts:
            time.sleep(pause)
            for key in keys:
                handler.emit(logging.makeLogRecord({"msg": notice.CORE_MESSAGE + key, "levelno": logging.WARNING}))
        return [r.getMessage() for r in caplog.records if r.name == "unet3d"]


def test_one_notice_per_load_even_when_loads_follow_at_once(caplog):
    same_again = _notices(caplog, [(KEYS, 0), (KEYS, 0)])                   # the same LoRA twice, no pause
    other = _notices(caplog, [(KEYS, 0), ([k.replace("unet.", "") for k in KEYS], 0.2)])
    assert len(same_again) == 2 and len(other) == 2
    assert all("'Load UNet3D LoRA'" in m and KEYS[0] in m for m in same_again)


def test_other_lines_and_keys_every_model_has_are_left_alone(caplog):
    assert _notices(caplog, [(["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"], 0)]) == []
    handler = notice.UnappliedLoraNotice()
    with caplog.at_level(logging.WARNING, logger="unet3d"):
        caplog.clear()
        handler.emit(logging.makeLogRecord({"msg": "Requested to load UNet3DBaseModel", "levelno": logging.WARNING}))
        assert not [r for r in caplog.records if r.name == "unet3d"]
