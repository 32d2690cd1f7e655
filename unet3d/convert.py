"""Convert one UNet3D checkpoint file (original ModelScope / Zeroscope layout or diffusers names, any supported
format) into a diffusers model folder: ``config.json`` + ``diffusion_pytorch_model[.variant].safetensors``.

    python -m unet3d.convert zs2_576w/text2video_pytorch_model.pth zeroscope_576w_unet --dtype fp16
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from .dtypes import WEIGHT_DTYPES, torch_dtype
from .errors import CheckpointError, UNet3DError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m unet3d.convert",
        description="Convert a single UNet3D checkpoint (e.g. ModelScope/Zeroscope text2video_pytorch_model.pth, "
                    "or a diffusers-named .safetensors) into a diffusers model folder usable by "
                    "UNet3DConditionModel.from_pretrained and by diffusers itself. Pickle files are read with "
                    "torch.load(weights_only=True): files that would run code are refused.",
        epilog="Without --config the architecture is inferred from the tensor shapes (block widths, layers per "
               "block, attention levels, text width, head size from the input temporal transformer); values the "
               "shapes cannot show use the diffusers defaults of every published model.")
    parser.add_argument("input", type=Path,
                        help="checkpoint file (.safetensors, .pth, .pt, .bin, .ckpt), or a folder: a ModelScope / "
                             "Zeroscope release folder with text2video_pytorch_model.pth, or a diffusers folder")
    parser.add_argument("output", type=Path,
                        help="output folder (created if missing; in an existing folder, config.json and the weights "
                             "file are replaced, other files are left alone)")
    parser.add_argument("--config", type=Path, default=None,
                        help="config.json (or a folder containing one) describing the model; default: inferred")
    parser.add_argument("--dtype", choices=WEIGHT_DTYPES, default=None,
                        help="store the weights in this dtype; default: keep the input's dtype")
    parser.add_argument("--variant", default=None,
                        help="weight-file variant, e.g. fp16 -> diffusion_pytorch_model.fp16.safetensors")
    parser.add_argument("--attention-head-dim", type=int, default=None,
                        help="override the head size (normally inferred; 64 in every published model)")
    return parser


def convert(input_path: Path, output: Path, config: Optional[Path] = None, dtype: Optional[str] = None,
            variant: Optional[str] = None, attention_head_dim: Optional[int] = None) -> Path:
    """Load ``input_path`` with full validation and write it as a diffusers folder; returns the weights path."""
    from .checkpoints.safe_io import usable_path
    from .model import UNet3DConditionModel

    input_path, output = usable_path(input_path, "input checkpoint"), usable_path(output, "output folder")
    if output.exists() and not output.is_dir():
        raise CheckpointError(f"the output {output} is an existing file; give a folder to write config.json and the "
                              f"weights into (a new path is created).")
    if variant is not None and (not variant or Path(variant).name != variant or "\\" in variant):
        raise CheckpointError(f"--variant {variant!r} must be a plain name such as fp16 (it becomes part of the "
                              f"weights file name).")
    cast = torch_dtype(dtype) if dtype else None
    if input_path.is_dir() and config is None and attention_head_dim is None:
        model = UNet3DConditionModel.from_pretrained(input_path, torch_dtype=cast)
    else:
        model = UNet3DConditionModel.from_single_file(input_path, config=config, torch_dtype=cast,
                                                      attention_head_dim=attention_head_dim)
    return model.save_pretrained(output, variant=variant)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        weights = convert(args.input, args.output, args.config, args.dtype, args.variant, args.attention_head_dim)
    except UNet3DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the output side: no space left, no permission, a read-only file system
        print(f"error: could not write {args.output}: {exc.strerror or exc}"
              f"{f' ({exc.filename})' if exc.filename else ''}. The folder may hold a partial result; free space "
              f"or pick another output folder, and run again.", file=sys.stderr)
        return 1
    size = weights.stat().st_size / 2**30
    print(f"wrote {args.output / 'config.json'} and {weights} ({size:.2f} GiB) in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
