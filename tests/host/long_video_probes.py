"""Prompt travel and FreeNoise executed INSIDE the ComfyUI host process (``HostProcess.call``); ``host`` is
comfy_runner.worker.Host. They return plain JSON data.

References are computed here, not by the plugin: keyframe prompts are encoded by core CLIPTextEncode, the per-frame
blend follows the documented rule written out below, and FreeNoise's noise is made by the paper's shuffle written
out below. Frame rows are identified by their noise: in a one-step run the UNet's input row is the sampler's noise
row (``calculate_input`` undoes ``noise_scaling``), so each recorded row is matched to the nearest noise row.
"""
import torch

SAMPLER, LOADER, CLIP, POS, NEG = "7", "1", "2", "4", "5"
COND, UNCOND = 0, 1                       # ComfyUI's cond_or_uncond values


def _first(raw):
    return raw[0][0] if isinstance(raw[0], list) else raw[0]


def _loaded_unet(host):
    if host.raw_output(LOADER) is None:
        raise RuntimeError("run a prompt with the same loader first: the UNet to hook comes from its cached output")
    return _first(host.raw_output(LOADER)).model.diffusion_model


def _encode(host, clip, text):
    (conditioning,) = host.nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(clip=clip, text=text)
    return conditioning[0][0][0].float()


def expected_rows(references, keyframes, frames, interpolation):
    """Per-frame embedding by the documented rule: hold the first prompt before the first keyframe and the last after
    the last; between keyframes a and b, (1 - w) a + w b with w = (f - fa) / (fb - fa) (linear) or 0 (hold)."""
    rows = []
    for f in range(frames):
        before = [i for i, (k, _) in enumerate(keyframes) if k <= f]
        i = before[-1] if before else 0
        if not before or i + 1 == len(keyframes) or interpolation == "hold":
            rows.append(references[i])
            continue
        w = (f - keyframes[i][0]) / (keyframes[i + 1][0] - keyframes[i][0])
        rows.append(references[i] + w * (references[i + 1] - references[i]))
    return rows


def rows_received(host, prompt, keyframes, negative, frames, videos, interpolation, seed, size):
    """Run ``prompt`` (one sampler step) with a pre-hook on the UNet; for every row of every call, find its video and
    frame by its noise and compare its text row with the embedding expected for that frame (cond) or the negative
    prompt's (uncond). Returns per (video, frame, cond/uncond) the largest error, the calls' row counts, and the
    smallest distance between two different keyframe embeddings (what an error must stay far below)."""
    import comfy.sample

    unet = _loaded_unet(host)
    seen = []

    def hook(module, args, kwargs):
        x, context = args[0], kwargs.get("context", args[2] if len(args) > 2 else None)
        seen.append((x.detach().float().cpu().clone(), context.detach().float().cpu().clone(),
                     list(kwargs["transformer_options"]["cond_or_uncond"])))
    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        answer = host.run(prompt)
    finally:
        handle.remove()
    if not answer["ok"]:
        raise RuntimeError(f"prompt failed: {answer.get('error')}")
    clip = _first(host.raw_output(CLIP))
    references = [_encode(host, clip, text) for _, text in keyframes]
    expected = expected_rows(references, keyframes, frames, interpolation)
    uncond = _encode(host, clip, negative)
    noise = comfy.sample.prepare_noise(torch.zeros(videos * frames, 4, size, size), seed, None).flatten(1)
    errors, calls = {}, []
    for x, context, cond_or_uncond in seen:
        per_chunk = x.shape[0] // len(cond_or_uncond)
        calls.append([x.shape[0], len(cond_or_uncond)])
        row_of = torch.cdist(x.flatten(1), noise).argmin(dim=1)
        for r in range(x.shape[0]):
            video, frame = divmod(int(row_of[r]), frames)
            kind = cond_or_uncond[r // per_chunk]
            target = expected[frame] if kind == COND else uncond
            key = f"{video},{frame},{kind}"
            err = float((context[r] - target).abs().max())
            errors[key] = max(errors.get(key, 0.0), err)
    spread = min(float((a - b).abs().max()) for i, a in enumerate(references) for b in references[i + 1:]) \
        if len(references) > 1 else 0.0
    return {"errors": errors, "calls": calls, "spread": spread,
            "scale": float(max(r.abs().max() for r in references))}


def paper_freenoise(noise, context_length, context_overlap, seed):
    """FreeNoise (arXiv 2310.15169) noise rescheduling, written directly: each stretch after the first window is a
    shuffled copy of the stretch one window back (one randperm per stretch, CPU generator seeded with ``seed``)."""
    noise = noise.clone()
    generator = torch.Generator().manual_seed(seed)
    place, stride = context_length, context_length - context_overlap
    while place < noise.shape[0]:
        count = min(stride, noise.shape[0] - place)
        noise[place:place + count] = noise[place - context_length + torch.randperm(count, generator=generator)]
        place += stride
    return noise


def freenoise_in_sampler(host, frames=20, length=8, overlap=2, freenoise_seed=3, seed=11, sampler_name="euler",
                         scheduler="normal", model_sampling=None):
    """Sample with FreeNoise on, and with it off from the paper's rescheduled noise: the same latents, bit for bit,
    if the hook rescheduled exactly that noise and changed nothing else. ``model_sampling``: stack core
    ModelSamplingDiscrete with this sampling type before Frame Batching (FreeNoise must keep it inside)."""
    import comfy.sample

    classes = host.nodes.NODE_CLASS_MAPPINGS
    model = _first(host.raw_output(LOADER))
    if model_sampling:
        (model,) = classes["ModelSamplingDiscrete"]().patch(model, model_sampling, False)
    node = classes["UNet3DFrameBatching"]()
    (on,) = node.patch(model, length, overlap, 1, False, "pyramid", 0, True, freenoise_seed)
    (off,) = node.patch(model, length, overlap, 1, False, "pyramid", 0, False, 0)
    positive, negative = _first(host.raw_output(POS)), _first(host.raw_output(NEG))
    latent = torch.zeros(frames, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed, None)
    rescheduled = paper_freenoise(noise, length, overlap, freenoise_seed)

    def run(model, noise):
        return comfy.sample.sample(model, noise, 2, 5.0, sampler_name, scheduler, positive, negative, latent,
                                   seed=seed)
    with_freenoise, from_rescheduled, plain = run(on, noise), run(off, rescheduled), run(off, noise)
    return {"equal": bool(torch.equal(with_freenoise, from_rescheduled)),
            "differs_from_plain": not bool(torch.allclose(with_freenoise, plain, atol=1e-4)),
            "finite": bool(torch.isfinite(with_freenoise).all()),
            "noise_changed": not bool(torch.equal(rescheduled, noise))}


def core_freenoise_agrees(host, frames=96, length=24, overlap=8, seed=5):
    """Core ComfyUI's own FreeNoise (``comfy.context_windows.apply_freenoise``, 0.3.5x on) against ours, where the
    host has it."""
    import importlib

    try:
        core = importlib.import_module("comfy.context_windows").apply_freenoise
    except (ImportError, AttributeError):
        return {"available": False}
    from unet3d.video.freenoise import freenoise_sources, reschedule_noise
    noise = torch.randn(frames, 4, 3, 3, generator=torch.Generator().manual_seed(seed))
    theirs = core(noise.clone(), 0, length, overlap, seed)
    ours = reschedule_noise(noise, freenoise_sources(frames, length, overlap, seed))
    return {"available": True, "equal": bool(torch.equal(theirs, ours))}
