"""Telling the user when ComfyUI's own LoRA loaders leave a UNet3D LoRA unapplied.

Core ``LoraLoader`` / ``LoraLoaderModelOnly`` map LoRA names onto a model through its state-dict names: on UNet3D,
kohya names (``lora_unet_down_blocks_0_...``) apply in every ComfyUI version and ``diffusion_model.<name>`` from 0.3
on, exactly as ``Load UNet3D LoRA`` applies them. diffusers/PEFT names (``unet.down_blocks...lora_A.weight``, bare
``down_blocks...``) and ModelScope names are not mapped, and core only logs ``lora key not loaded: <key>`` for each.
The host offers a plugin no clean way to extend its name mapping, so a logging handler on the root logger
recognises those lines for keys only a UNet3D has (temporal layers) and adds one warning with the remedy.
"""
from __future__ import annotations

import logging
import re
import time

CORE_MESSAGE = "lora key not loaded: "
UNET3D_ONLY = re.compile(r"(temp_attentions|temp_convs|transformer_in\.|temopral_conv)")
# Core logs a load's unmapped keys in one tight loop (microseconds apart); two loads are at least a file read and a
# graph step apart. A new load starts after a pause this long, or when a key of the current burst comes again (the
# same LoRA loaded again).
BURST_GAP_SECONDS = 0.05
MAX_BURST_KEYS = 100_000
NOTICE = ("UNet3D: ComfyUI's LoRA loader could not map this UNet3D LoRA onto the model (e.g. %r) and left those "
          "weights unchanged. It reads kohya-style names only; load UNet3D LoRAs in diffusers/PEFT or ModelScope "
          "naming with the 'Load UNet3D LoRA' node (video/unet3d), which applies them exactly.")


class UnappliedLoraNotice(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.last_line = float("-inf")
        self.burst: set = set()      # the keys of the current load's burst

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record elsewhere is not ours to report
            return
        if not message.startswith(CORE_MESSAGE) or not UNET3D_ONLY.search(message):
            return
        key = message[len(CORE_MESSAGE):]
        now = time.monotonic()
        new_load = now - self.last_line > BURST_GAP_SECONDS or key in self.burst or len(self.burst) >= MAX_BURST_KEYS
        self.last_line = now
        if new_load:
            self.burst.clear()
            logging.getLogger("unet3d").warning(NOTICE, key)
        self.burst.add(key)


def install() -> None:
    """Attach the handler to the root logger once per process (a re-imported pack does not add a second)."""
    root = logging.getLogger()
    if not any(type(h).__name__ == UnappliedLoraNotice.__name__ for h in root.handlers):
        root.addHandler(UnappliedLoraNotice())
