"""Hostile and malformed bodies for ``POST /unet3d/estimate``, and the models folder they refer to.

``populate(models)`` writes the files the bodies name (a good header-only UNet, damaged headers, a truncated file, an
empty file, a code-running pickle renamed .safetensors, a diffusers folder with an absurd config, a symlink loop under
``diffusers``). ``CASES`` maps a name to (body: bytes or JSON-able, expected ``kind``, words the error must contain).
``EXTREME`` are valid bodies at the nodes' limits, which must answer 200.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from hostile_files import BAD_ENTRIES, bad_entry_file, code_running_pickle, deeply_nested_header, header_only_unet

GOOD = "zeroscope_header_only.safetensors"
TINY = dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1, cross_attention_dim=64,
            attention_head_dim=8)
REQUEST = "EstimateRequestError"
# diffusers folders whose config.json is absurd (next to real weights of TINY)
CONFIGS = {"absurd": {"layers_per_block": 10**9},
           "wrong-type": {"block_out_channels": 5},
           "wide": {**TINY, "block_out_channels": [1_000_000, 1_000_000]}}


def populate(models: Path) -> Path:
    """Write the files of the hostile set under ``models``; returns the marker a pickle would create if it ran."""
    unet, diffusers = models / "unet", models / "diffusers"
    unet.mkdir(parents=True, exist_ok=True)
    diffusers.mkdir(parents=True, exist_ok=True)
    header_only_unet(unet / GOOD)
    for kind in BAD_ENTRIES:
        bad_entry_file(unet / f"bad-{kind}.safetensors", kind)
    deeply_nested_header(unet / "deep-header.safetensors")
    good_tiny = header_only_unet(unet / "tiny.safetensors", **TINY)
    data = good_tiny.read_bytes()
    (unet / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (unet / "cut-in-header.safetensors").write_bytes(data[:12])
    (unet / "empty.safetensors").write_bytes(b"")
    marker = models / "PWNED"
    code_running_pickle(unet / "pickle-renamed.safetensors", marker)
    for name, config in CONFIGS.items():
        folder = diffusers / name / "unet"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel", **config}))
        header_only_unet(folder / "diffusion_pytorch_model.safetensors", **TINY)  # weights are there; the config lies
    loop = diffusers / "loop"
    loop.mkdir(exist_ok=True)
    if not (loop / "again").is_symlink():
        os.symlink("..", loop / "again")
    return marker


def _loader(name):
    return [{"type": "UNet3DLoader", "inputs": {"unet_name": name}}]


def _with(latent=None, chain=None, **rest):
    return {"latent": latent or {"frames": 24}, "chain": chain if chain is not None else _loader(GOOD), **rest}


def _batching(**inputs):
    return [{"type": "UNet3DFrameBatching", "inputs": inputs}] + _loader(GOOD)


def _deep(depth):
    return ("[" * depth + "]" * depth).encode()


CASES = {
    # the request itself
    "frames-million": (_with({"frames": 1_000_000}), REQUEST, "`latent.frames` must be a whole number from 1 to 4096"),
    "frames-1e12": (_with({"frames": 1e12}), REQUEST, "latent.frames"),
    "frames-10**100": (_with({"frames": 10**100}), REQUEST, "latent.frames"),
    "frames-1e308": (_with({"frames": 1e308}), REQUEST, "latent.frames"),
    "frames-text": (_with({"frames": "24"}), REQUEST, "latent.frames"),
    "frames-infinity": (b'{"latent": {"frames": Infinity}}', REQUEST, "Infinity is not a number JSON allows"),
    "cfg-nan": (b'{"latent": {}, "cfg": NaN}', REQUEST, "NaN is not a number JSON allows"),
    "cfg-text": (_with(cfg="high"), REQUEST, "`cfg` must be a finite number"),
    "tokens-huge": (_with(tokens=10**9), REQUEST, "`tokens` must be a whole number"),
    "stride-million": (_with({"frames": 1_000_000}, _batching(context_length=16, context_stride=1_000_000)), REQUEST,
                       "latent.frames"),
    "stride-million-4096": (_with({"frames": 4096}, _batching(context_length=16, context_stride=1_000_000)),
                            REQUEST, "context_stride` must be a whole number from 1 to 8"),
    "overlap-not-below-length": (_with({"frames": 64}, _batching(context_length=16, context_overlap=16)), REQUEST,
                                 "context_overlap (16) must be smaller than context_length (16)"),
    "rows-below-length": (_with({"frames": 64}, _batching(context_length=16, max_batch_rows=8)), REQUEST,
                          "max_batch_rows (8) is smaller than context_length (16)"),
    "closed-loop-text": (_with({"frames": 64}, _batching(closed_loop="yes")), REQUEST, "closed_loop"),
    "chunk-dim-list": (_with(chain=[{"type": "UNet3DForwardChunking", "inputs": {"dim": []}}] + _loader(GOOD)),
                       REQUEST, "`chain[0] (UNet3DForwardChunking).dim` must be one of"),
    "slice-zero": (_with(chain=[{"type": "UNet3DAttentionSlicing", "inputs": {"slice_size": "0"}}] + _loader(GOOD)),
                   REQUEST, "slice"),
    "weight-dtype": (_with(chain=[{"type": "UNet3DLoader", "inputs": {"unet_name": GOOD, "weight_dtype": "fp64"}}]),
                     REQUEST, "`weight_dtype` 'fp64' is not one of"),
    "model-number": (_with(chain=_loader(5)), REQUEST, "unet_name` must be text"),
    "model-traversal": (_with(chain=_loader("../../../../etc/passwd")), REQUEST,
                        "is not in the Load UNet3D Model list"),
    "model-long-name": (_with(chain=_loader("a" * 300 + ".safetensors")), REQUEST, "is not in the Load UNet3D"),
    "no-model": ({"latent": {"frames": 24}}, REQUEST, "connect a Load UNet3D Model"),
    "chain-object": (_with(chain={"a": 1}), REQUEST, "`chain` must be a list"),
    "chain-too-long": (_with(chain=[{}] * 65), REQUEST, "`chain` must be a list of at most 64"),
    "config-list": (_with(chain=[], config=[1]), REQUEST, "`config` must be null or a config.json object"),
    "config-width-number": (_with(chain=[], config={"block_out_channels": 5}), "CheckpointError",
                            "`config` is not a valid UNet3D config"),
    "config-million-layers": (_with(chain=[], config={"layers_per_block": 10**6}), "CheckpointError",
                              "`layers_per_block` asks for 1000000 layers per block"),
    "config-huge-width": (_with(chain=[], config={"block_out_channels": [10**6] * 4, "norm_num_groups": 1}),
                          "CheckpointError", "channels in a level"),
    "body-list": ([1, 2], REQUEST, "must be a JSON object"),
    "body-deep": (_deep(5000), REQUEST, "nests deeper than 8 levels"),
    "body-huge": (b" " * (1 << 20), REQUEST, "larger than 65536 bytes"),
    "body-not-utf8": (b"\xff\xfe{", REQUEST, "not UTF-8"),
    "body-not-json": (b"{latent:", REQUEST, "not usable JSON"),
    # the model file the loader points at
    **{f"file-{kind}": (_with(chain=_loader(f"bad-{kind}.safetensors")), "CorruptCheckpointError", words)
       for kind, (_, words) in BAD_ENTRIES.items()},
    "file-deep-header": (_with(chain=_loader("deep-header.safetensors")), "CorruptCheckpointError",
                         "nests deeper than"),
    "file-truncated": (_with(chain=_loader("truncated.safetensors")), "CorruptCheckpointError", "truncated"),
    "file-cut-in-header": (_with(chain=_loader("cut-in-header.safetensors")), "CorruptCheckpointError",
                           "cut-in-header.safetensors"),
    "file-empty": (_with(chain=_loader("empty.safetensors")), "CorruptCheckpointError", "is empty (0 bytes)"),
    "file-pickle-renamed": (_with(chain=_loader("pickle-renamed.safetensors")), "CheckpointError",
                            "cannot be read without loading it"),
    "folder-million-layers": (_with(chain=_loader("[diffusers] absurd")), "CheckpointError",
                              "`layers_per_block` asks for 1000000000 layers per block"),
    "folder-width-number": (_with(chain=_loader("[diffusers] wrong-type")), "CheckpointError",
                            "is not a valid UNet3D config"),
    "folder-million-channels": (_with(chain=_loader("[diffusers] wide")), "CheckpointError",
                                "`block_out_channels` asks for 1000000 channels in a level"),
}

EXTREME = {
    "4096-frames-64-videos-16384px-windows-of-1": _with(
        {"frames": 4096, "batch_size": 64, "width": 16384, "height": 16384},
        _batching(context_length=1, context_overlap=0, context_stride=8, closed_loop=True, max_batch_rows=1)),
    "4096-frames-64-videos-no-windows": _with({"frames": 4096, "batch_size": 64, "width": 16384, "height": 16384}),
    "4096-frames-overlap-15-stride-8": _with({"frames": 4096, "batch_size": 64},
                                             _batching(context_length=16, context_overlap=15, context_stride=8)),
}
