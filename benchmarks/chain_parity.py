"""End to end: the ComfyUI graph against diffusers' TextToVideoSDPipeline on the same random weights, by PSNR.

Weights (random, written to a temporary folder and linked into the host's model folders, removed afterwards):

* UNet: a small UNet3D (widths 32/64/128/128, 1024-wide context) saved in the original release layout
  (``text2video_pytorch_model.pth``, ModelScope ``UNetSD`` names), loaded by Load UNet3D Model; diffusers gets the
  same tensors under its own names;
* VAE: a random SD-sized ``AutoencoderKL`` (ComfyUI builds its VAE from a fixed config) saved as the diffusers
  repo's ``vae/diffusion_pytorch_model.safetensors`` and, converted by the host's own converter, as an LDM-layout
  ``VQGAN_autoencoder.pth`` (the original release's layout); core VAELoader loads either;
* text: the runner's random OpenCLIP-H stand-in (transformers names) through core CLIPLoader + CLIPTextEncode. Its
  outputs (positive and negative embeddings) are captured and handed to diffusers as ``prompt_embeds`` /
  ``negative_prompt_embeds``, so in (1) the sampler chain is compared, not the text encoder.

Compared: (1) per sampler setting, the ComfyUI graph (Load UNet3D Model -> Empty UNet3D Video Latent -> KSampler ->
VAE Decode, embedded host unless ``--comfyui``) against the pipeline with the matching diffusers scheduler, same
initial noise (ComfyUI's ``prepare_noise`` for the seed, as the pipeline's ``latents``), same cfg and steps: PSNR of
the sampled latents (peak = the diffusers latents' range) and of the decoded frames in [0, 1] (ComfyUI's VAE Decode
against the pipeline's decode); (2) the VAE alone: the pipeline's latents decoded by core VAE Decode from each file
against diffusers' ``AutoencoderKL``; (3) the text encoder alone: the stand-in's tensors renamed to the original
release's OpenCLIP layout (``open_clip_pytorch_model.bin``) and as they are, each through core Load CLIP +
CLIPTextEncode, against transformers' ``CLIPTextModel`` built as the diffusers repos ship it (23 layers), on the
token ids ComfyUI's tokenizer produced.

    python benchmarks/chain_parity.py                       # 8 frames, 128x128, 20 steps, cfg 9
    python benchmarks/chain_parity.py --steps 50 --frames 16 --size 256
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
UNET_CONFIG = dict(block_out_channels=(32, 64, 128, 128), layers_per_block=1, attention_head_dim=8,
                   cross_attention_dim=1024, norm_num_groups=32)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215, sample_size=256)
SHIPPED_DDIM = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
SCALING = 0.18215                      # SD latent scale: UNet latents = VAE latents x SCALING
LINK = "unet3d-chain-parity"
# (ComfyUI sampler, scheduler, diffusers scheduler class, config changes, label)
SETTINGS = [
    ("ddim", "ddim_uniform", "DDIMScheduler", {}, "DDIM as shipped (leading)"),
    ("ddim", "simple", "DDIMScheduler", {}, "DDIM as shipped (leading)"),
    ("ddim", "simple", "DDIMScheduler", {"timestep_spacing": "trailing"}, "DDIM trailing"),
    ("ddim", "simple", "DDIMScheduler", {"timestep_spacing": "trailing", "set_alpha_to_one": True},
     "DDIM trailing, set_alpha_to_one"),
    ("dpmpp_2m", "simple", "DPMSolverMultistepScheduler", {}, "DPM++ 2M from the shipped config (linspace)"),
    ("dpmpp_2m", "simple", "DPMSolverMultistepScheduler", {"timestep_spacing": "trailing"}, "DPM++ 2M trailing"),
    ("dpmpp_2m", "karras", "DPMSolverMultistepScheduler", {}, "DPM++ 2M from the shipped config (linspace)"),
]


# ---- run inside the ComfyUI host (HostProcess.call loads this file there) -----------------------------------------

def host_convert_vae(host, src, dst):
    """The host's own diffusers -> LDM VAE renaming (what VAELoader undoes), saved as a .pth."""
    import comfy.diffusers_convert
    from safetensors.torch import load_file
    torch.save(comfy.diffusers_convert.convert_vae_state_dict(load_file(src)), dst)
    return {"ok": True}


def host_decode(host, vae_name, latent_path, out_path):
    """Core VAELoader + VAEDecode on a saved latent (rows = frames)."""
    classes = host.nodes.NODE_CLASS_MAPPINGS
    (vae,) = classes["VAELoader"]().load_vae(vae_name)
    (images,) = classes["VAEDecode"]().decode(vae, {"samples": torch.load(latent_path, weights_only=True)})
    torch.save(images.float().cpu(), out_path)
    return {"ok": True}


def _token_ids(tokens):
    """The ids of the first 77-token chunk of a host tokenizer's output ({name: [[(id, weight), ...]]} or lists)."""
    while isinstance(tokens, dict):
        tokens = next(iter(tokens.values()))
    while isinstance(tokens, list) and tokens and isinstance(tokens[0], list):
        tokens = tokens[0]
    return [int(t[0]) for t in tokens]


def host_encode(host, clip_name, text, out_path):
    """Core CLIPLoader (type stable_diffusion) + CLIPTextEncode, and the token ids the encoder saw."""
    classes = host.nodes.NODE_CLASS_MAPPINGS
    (clip,) = classes["CLIPLoader"]().load_clip(clip_name=clip_name, type="stable_diffusion")
    (conditioning,) = classes["CLIPTextEncode"]().encode(clip=clip, text=text)
    torch.save({"cond": conditioning[0][0].float().cpu(), "ids": _token_ids(clip.tokenize(text))}, out_path)
    return {"ok": True}


# ---- the benchmark --------------------------------------------------------------------------------------------------

def psnr(got: torch.Tensor, want: torch.Tensor, peak: float) -> float:
    mse = float(((got.double() - want.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def write_weights(folder: Path, seed: int):
    """Random UNet (original layout) and VAE (diffusers layout); returns the diffusers modules."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from safetensors.torch import save_file

    sys.path.insert(0, str(REPO / "tests"))
    from helpers_checkpoint import diffusers_to_original  # the inverse ModelScope renaming (test helper)

    torch.manual_seed(seed)
    unet = UNet3DConditionModel(**UNET_CONFIG).eval()
    config = dict(unet.config)
    torch.save(diffusers_to_original(unet.state_dict(), config), folder / "text2video_pytorch_model.pth")
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**SD_VAE).eval()
    (folder / "vae").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()},
              str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    return unet, vae


def openclip_layout(sd: dict) -> dict:
    """A transformers CLIP text model's tensors under OpenCLIP's names (``open_clip_pytorch_model.bin``): fused
    q/k/v in-projections, ``resblocks``, ``ln_final``, a transposed ``text_projection``."""
    out = {"token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           "ln_final.bias": sd["text_model.final_layer_norm.bias"]}
    layer = 0
    while f"text_model.encoder.layers.{layer}.layer_norm1.weight" in sd:
        src, dst = f"text_model.encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            for a, b in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                         ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")):
                out[f"{dst}{b}.{kind}"] = sd[f"{src}{a}.{kind}"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([sd[f"{src}self_attn.{x}_proj.{kind}"] for x in "qkv"])
        layer += 1
    if "text_projection.weight" in sd:
        out["text_projection"] = sd["text_projection.weight"].t().contiguous()
    return out


def diffusers_text_encoder(sd: dict):
    """transformers' CLIPTextModel as the diffusers repos ship it: the OpenCLIP-H text tower's first 23 layers and
    its final norm (= OpenCLIP's penultimate layer, what ComfyUI's stable_diffusion CLIP returns)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                            num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
                            projection_dim=1024)
    model = CLIPTextModel(config).eval()
    # transformers 4 names these "text_model.embeddings...", later versions "embeddings...": match without the prefix
    by_name = {k.removeprefix("text_model."): v for k, v in sd.items()}
    kept = {k: by_name[k.removeprefix("text_model.")].float() for k in model.state_dict()
            if k.removeprefix("text_model.") in by_name}
    missing = {k for k in set(model.state_dict()) - set(kept) if not k.endswith("embeddings.position_ids")}
    if missing:
        raise KeyError(f"text encoder tensors missing: {sorted(missing)[:4]}")
    model.load_state_dict(kept, strict=False)
    return model


def link_into(host_folders: dict, folder: Path):
    links = []
    for kind in ("unet", "vae", "clip"):
        target = Path(host_folders[kind][0]) / LINK
        if target.is_symlink():
            target.unlink()
        target.symlink_to(folder, target_is_directory=True)
        links.append(target)
    return links


def comfy_run(proc, names, sampler_name, scheduler, args, capture_dir: Path):
    from comfy_runner import graphs

    prompt = graphs.t2v_prompt(names["unet"], names["clip"], names["vae"], width=args.size, height=args.size,
                               frames=args.frames, seed=args.seed, steps=args.steps, cfg=args.cfg,
                               sampler_name=sampler_name, scheduler=scheduler, positive=args.prompt,
                               negative=args.negative, output="webp", prefix="chain_parity")
    capture_dir.mkdir(parents=True, exist_ok=True)
    answer = proc.run(prompt, capture=[graphs.POS, graphs.NEG, graphs.SAMPLER, graphs.DECODE],
                      capture_dir=str(capture_dir))
    got = {k: torch.load(v, weights_only=True) for k, v in answer["captured"].items()}

    def first(raw):
        return raw[0][0] if isinstance(raw[0], list) else raw[0]
    return {"positive": first(got[graphs.POS])[0][0], "negative": first(got[graphs.NEG])[0][0],
            # KSampler's LATENT is in the VAE's scale (ComfyUI's process_latent_out), diffusers' in the UNet's
            "latent": first(got[graphs.SAMPLER])["samples"] * SCALING, "frames": first(got[graphs.DECODE])}


def diffusers_run(pipe, scheduler_cls, changes, comfy, args):
    import diffusers

    pipe.scheduler = getattr(diffusers, scheduler_cls).from_config({**SHIPPED_DDIM, **changes})
    h = args.size // 8
    noise = torch.randn((args.frames, 4, h, h), generator=torch.Generator().manual_seed(args.seed))  # prepare_noise
    latents = pipe(prompt_embeds=comfy["positive"], negative_prompt_embeds=comfy["negative"], num_frames=args.frames,
                   height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=args.cfg,
                   latents=noise.transpose(0, 1).unsqueeze(0), output_type="latent").frames
    video = pipe.video_processor.postprocess_video(video=pipe.decode_latents(latents), output_type="pt")
    return latents[0].transpose(0, 1), video[0].permute(0, 2, 3, 1)        # (F, 4, h, w), (F, H, W, 3)


def text_encoder_table(proc, standins, folder: Path, args):
    """Core CLIPLoader on the stand-in text tower in both layouts against transformers' 23-layer CLIPTextModel, on
    the token ids ComfyUI's tokenizer produced (the encoders are compared, not the tokenizers)."""
    from safetensors.torch import load_file

    hf = load_file(str(Path(standins["folders"]["clip"][0]) / standins["clip"]))
    torch.save({k: v.float() for k, v in openclip_layout(hf).items()}, folder / "open_clip_pytorch_model.bin")
    reference = diffusers_text_encoder(hf)
    print("\n| text encoder file in core Load CLIP | max abs difference to transformers' CLIPTextModel | "
          "largest value |")
    print("|---|---|---|")
    for name in (f"{LINK}/open_clip_pytorch_model.bin", standins["clip"]):
        out = folder / "encoded.pt"
        proc.call(__file__, "host_encode", clip_name=name, text=args.prompt, out_path=str(out))
        got = torch.load(out, weights_only=True)
        want = reference(input_ids=torch.tensor([got["ids"]])).last_hidden_state
        label = "open_clip_pytorch_model.bin (OpenCLIP layout)" if name.startswith(LINK) else \
            "text_encoder/model.safetensors layout (transformers names)"
        print(f"| `{label}` | {float((got['cond'] - want).abs().max()):.1e} | {float(want.abs().max()):.1f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=128, help="width = height in pixels")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=9.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--prompt", default="a red panda surfing a wave")
    p.add_argument("--negative", default="watermark, text, blurry")
    p.add_argument("--comfyui", help="ComfyUI root (default: $COMFYUI_PATH, else the embedded March-2024 host)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from diffusers import TextToVideoSDPipeline

    from comfy_runner.client import HostProcess
    from comfy_runner.host import cache_root

    torch.set_grad_enabled(False)
    folder = Path(tempfile.mkdtemp(prefix="unet3d-chain-parity-"))
    links = []
    try:
        unet, vae = write_weights(folder, args.seed)
        with HostProcess(args.comfyui, str(folder / "output"), host_args="--fp32-text-enc",
                         log_path=str(folder / "host.log")) as proc:
            standins = proc.request("standins", cache_dir=str(cache_root()))
            links = link_into(standins["folders"], folder)
            proc.call(__file__, "host_convert_vae", src=str(folder / "vae" / "diffusion_pytorch_model.safetensors"),
                      dst=str(folder / "VQGAN_autoencoder.pth"))
            names = {"unet": f"{LINK}/text2video_pytorch_model.pth", "clip": standins["clip"],
                     "vae": f"{LINK}/vae/diffusion_pytorch_model.safetensors"}
            pipe = TextToVideoSDPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet,
                                         scheduler=None).to(torch.float32)
            pipe.set_progress_bar_config(disable=True)
            print(f"ComfyUI {proc.hello.get('version')}; {args.frames} frames {args.size}x{args.size}, "
                  f"{args.steps} steps, cfg {args.cfg}; UNet {UNET_CONFIG['block_out_channels']}, random weights\n")
            print("| ComfyUI sampler + scheduler | diffusers scheduler | latent PSNR dB | frames PSNR dB | "
                  "pixels at 0 or 1 |")
            print("|---|---|---|---|---|")
            reference_latents = None
            for i, (sampler_name, scheduler, cls, changes, label) in enumerate(SETTINGS):
                comfy = comfy_run(proc, names, sampler_name, scheduler, args, folder / f"cap{i}")
                latents, video = diffusers_run(pipe, cls, changes, comfy, args)
                reference_latents = latents if reference_latents is None else reference_latents
                peak = float(latents.max() - latents.min())
                clipped = float(((video <= 0) | (video >= 1)).float().mean())
                print(f"| `{sampler_name}` + `{scheduler}` | {label} | {psnr(comfy['latent'], latents, peak):.1f} | "
                      f"{psnr(comfy['frames'], video, 1.0):.1f} | {100 * clipped:.0f}% |", flush=True)
            torch.save(reference_latents / SCALING, folder / "latents.pt")
            want = pipe.video_processor.postprocess_video(
                video=pipe.decode_latents(reference_latents.transpose(0, 1).unsqueeze(0)),
                output_type="pt")[0].permute(0, 2, 3, 1)
            print("\n| VAE file in core VAELoader | decode PSNR dB against diffusers' AutoencoderKL |")
            print("|---|---|")
            for name in (f"{LINK}/vae/diffusion_pytorch_model.safetensors", f"{LINK}/VQGAN_autoencoder.pth"):
                out = folder / "decoded.pt"
                proc.call(__file__, "host_decode", vae_name=name, latent_path=str(folder / "latents.pt"),
                          out_path=str(out))
                print(f"| `{name.split('/', 1)[1]}` | {psnr(torch.load(out, weights_only=True), want, 1.0):.1f} |")
            text_encoder_table(proc, standins, folder, args)
    finally:
        for link in links:
            if link.is_symlink():
                link.unlink()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
