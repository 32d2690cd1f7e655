"""Functions executed INSIDE the ComfyUI host process (``HostProcess.call``), where comfy and the plugin are
imported. ``host`` is comfy_runner.worker.Host. Return plain JSON data; tensors go to files under the tmp dirs."""
import inspect
import math

import torch

SAMPLER, LOADER, POS, NEG = "7", "1", "4", "5"


def _first(raw):
    return raw[0][0] if isinstance(raw[0], list) else raw[0]


def _patcher(host):
    return _first(host.raw_output(LOADER))


def _run(host, prompt, fresh=False):
    answer = host.run(prompt, fresh=fresh)
    if not answer["ok"]:
        raise RuntimeError(f"prompt failed: {answer.get('error')}")
    return _first(host.raw_output(SAMPLER))["samples"].clone()


def frames_seen(host, prompt):
    """Record (rows per cond chunk, num_video_frames) the UNet receives while the prompt samples."""
    _run(host, prompt)                               # loads the model (cached for the next run)
    seen = {"rows_per_chunk": [], "frames": []}
    unet = _patcher(host).model.diffusion_model

    def hook(module, args, kwargs):
        x = args[0]
        k = len(kwargs["transformer_options"]["cond_or_uncond"])
        seen["rows_per_chunk"].append(x.shape[0] // k)
        seen["frames"].append(kwargs.get("num_video_frames"))
    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        _run(host, _with_seed(prompt, prompt[SAMPLER]["inputs"]["seed"] + 1))
    finally:
        handle.remove()
    seen["rows_per_chunk"] = sorted(set(seen["rows_per_chunk"]))
    seen["frames"] = sorted(set(seen["frames"]), key=str)
    return seen


def _with_seed(prompt, seed):
    out = dict(prompt)
    out[SAMPLER] = {**prompt[SAMPLER], "inputs": {**prompt[SAMPLER]["inputs"], "seed": seed}}
    return out


def _sigmas(model_patcher, steps):
    import comfy.samplers
    if hasattr(comfy.samplers, "calculate_sigmas_scheduler"):      # March 2024
        return comfy.samplers.calculate_sigmas_scheduler(model_patcher.model, "normal", steps)
    return comfy.samplers.calculate_sigmas(model_patcher.get_model_object("model_sampling"), "normal", steps)


def one_step_parity(host, prompt, split_batches=False):
    """One euler step of KSampler through ComfyUI vs the same step computed with the pure ``unet3d`` model on the
    same weights, noise and text embeddings. ``split_batches`` makes ComfyUI run cond and uncond separately."""
    import comfy.sample

    from unet3d import UNet3DConditionModel

    _run(host, _with_seed(prompt, prompt[SAMPLER]["inputs"]["seed"] + 1))   # loads everything (cached below)
    patcher = _patcher(host)
    base = patcher.model
    calls = []

    def record(module, args, kwargs):
        calls.append(len(kwargs["transformer_options"]["cond_or_uncond"]))
    handle = base.diffusion_model.register_forward_pre_hook(record, with_kwargs=True)
    frames = prompt["6"]["inputs"]["frames"]
    if split_batches:                                # nothing bigger than one chunk "fits": one call per cond
        base.memory_required = lambda input_shape, cond_shapes={}: 0 if input_shape[0] <= frames else 1e30
    try:
        prompt = dict(prompt)
        prompt[SAMPLER] = {**prompt[SAMPLER], "inputs": {**prompt[SAMPLER]["inputs"], "steps": 1,
                                                         "sampler_name": "euler", "scheduler": "normal"}}
        got = _run(host, prompt)
    finally:
        handle.remove()
        if split_batches:
            del base.memory_required                 # back to the class's method

    inputs = prompt[SAMPLER]["inputs"]
    cfg, seed = inputs["cfg"], inputs["seed"]
    cond = _first(host.raw_output(POS))[0][0].float()
    uncond = _first(host.raw_output(NEG))[0][0].float()
    latent = torch.zeros_like(got)
    noise = comfy.sample.prepare_noise(latent, seed, None)
    ms = base.model_sampling
    sigmas = _sigmas(patcher, 1)
    sigma = sigmas[0:1]
    max_denoise = math.isclose(float(ms.sigma_max), float(sigma), rel_tol=1e-5) or float(sigma) > float(ms.sigma_max)
    params = inspect.signature(ms.noise_scaling).parameters
    x = ms.noise_scaling(sigma, noise, latent, max_denoise) if "max_denoise" in params else \
        ms.noise_scaling(sigma, noise, latent)
    pure = UNet3DConditionModel.from_single_file(_unet_path(host, prompt[LOADER]["inputs"]["unet_name"])).eval()
    xin = ms.calculate_input(sigma, x).unsqueeze(0).transpose(1, 2)        # (1, C, F, h, w)
    t = ms.timestep(sigma).float()

    def eps(context):
        return pure(xin, t, context, return_dict=False)[0].transpose(1, 2)[0]
    e = eps(cond) if cfg == 1.0 else eps(uncond) + cfg * (eps(cond) - eps(uncond))
    denoised = ms.calculate_denoised(sigma, e, x)
    expected = x + (x - denoised) / sigma * (sigmas[1] - sigma)           # one Euler step
    expected = base.process_latent_out(expected)
    diff = (got - expected).abs()
    return {"max_abs": float(diff.max()), "max_ref": float(expected.abs().max()),
            "rel_l2": float((got - expected).norm() / expected.norm()), "calls_k": calls}


def _unet_path(host, name):
    return host.folder_paths.get_full_path("unet", name)


def lowvram_equals_full(host, prompt):
    """Sample with ComfyUI's partial-load path forced (a budget of a third of the UNet, on CPU), then fully loaded;
    return both latents' difference and what the partial load did."""
    import comfy.model_management as mm
    LoadedModel = mm.LoadedModel
    original = LoadedModel.model_load
    state = {}

    def partial_load(self, lowvram_model_memory=0, *args, **kwargs):
        if type(self.model.model).__name__ == "UNet3DBaseModel":
            budget = max(1, self.model.model_size() // 3)
            out = original(self, budget, *args, **kwargs)
            mods = list(self.model.model.diffusion_model.modules())
            state["streamed"] = sum(1 for m in mods if getattr(m, "comfy_cast_weights", False))
            state["layers"] = sum(1 for m in mods if hasattr(m, "comfy_cast_weights"))
            state["budget"] = budget
            return out
        return original(self, lowvram_model_memory, *args, **kwargs)

    seed = prompt[SAMPLER]["inputs"]["seed"]
    mm.unload_all_models()
    LoadedModel.model_load = partial_load
    try:
        low = _run(host, prompt)
    finally:
        LoadedModel.model_load = original
    mm.unload_all_models()
    _run(host, _with_seed(prompt, seed + 1))            # changes the input so the next prompt samples again
    full = _run(host, prompt)
    return {"max_abs": float((low - full).abs().max()), "equal": bool(torch.equal(low, full)), **state}


def memory_estimates(host, prompt):
    """``memory_required`` of the loaded UNet3D for several frame counts, plain and with UNet3D Frame Batching."""
    _run(host, prompt)
    patcher = _patcher(host)
    model = patcher.model
    batching = host.nodes.NODE_CLASS_MAPPINGS["UNet3DFrameBatching"]()
    windowed = batching.patch(patcher, 8, 2, 1, False, "flat", 0)[0]

    def required(frames, current=None):
        previous = getattr(model, "current_patcher", None)
        model.current_patcher = current
        try:
            return int(model.memory_required([2 * frames, 4, 16, 16]))
        finally:
            model.current_patcher = previous
    return {"plain": {f: required(f) for f in (8, 32, 64)},
            "windowed": {f: required(f, windowed) for f in (8, 32, 64)}}
