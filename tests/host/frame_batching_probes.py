"""Frame-batching functions executed INSIDE the ComfyUI host process (``HostProcess.call``); ``host`` is
comfy_runner.worker.Host. They return plain JSON data."""
import inspect

import torch

SAMPLER, LOADER, POS, NEG = "7", "1", "4", "5"


def _first(raw):
    return raw[0][0] if isinstance(raw[0], list) else raw[0]


def _run(host, prompt):
    answer = host.run(prompt)
    if not answer["ok"]:
        raise RuntimeError(f"prompt failed: {answer.get('error')}")
    return _first(host.raw_output(SAMPLER))["samples"].clone()


def calls_seen(host, prompt):
    """Sample ``prompt`` (its loader output must be cached by an earlier prompt); return what each UNet call
    received (rows, cond chunks, num_video_frames) and a summary of the sampled latent."""
    if host.raw_output(LOADER) is None:
        raise RuntimeError("run a prompt with the same loader first: the UNet to hook comes from its cached output")
    seen = []
    unet = _first(host.raw_output(LOADER)).model.diffusion_model

    def hook(module, args, kwargs):
        seen.append([args[0].shape[0], len(kwargs["transformer_options"]["cond_or_uncond"]),
                     kwargs.get("num_video_frames")])
    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out = _run(host, prompt)
    finally:
        handle.remove()
    return {"calls": seen, "shape": list(out.shape), "finite": bool(torch.isfinite(out).all()),
            "std": float(out.std())}


def chains_an_existing_wrapper(host, frames=40, max_batch_rows=24):
    """Put a recording wrapper on a clone of the loaded MODEL, stack UNet3DFrameBatching on it, sample one step, and
    report what the recorder saw and whether the input MODELs kept their options."""
    import comfy.sample

    base = _first(host.raw_output(LOADER))
    base_wrapper = base.model_options.get("model_function_wrapper")
    seen = []

    def recorder(apply_model, args):
        seen.append([args["input"].shape[0], list(args["cond_or_uncond"]),
                     args["c"]["transformer_options"]["cond_or_uncond"] == args["cond_or_uncond"],
                     int(args["c"]["c_crossattn"].shape[0])])
        return apply_model(args["input"], args["timestep"], **args["c"])
    wrapped = base.clone()
    wrapped.set_model_unet_function_wrapper(recorder)
    node = host.nodes.NODE_CLASS_MAPPINGS["UNet3DFrameBatching"]()
    (patched,) = node.patch(wrapped, 16, 4, 1, False, "pyramid", max_batch_rows)
    ours = patched.model_options["model_function_wrapper"]
    module = inspect.getmodule(type(node))
    positive = _first(host.raw_output(POS))
    negative = _first(host.raw_output(NEG))
    latent = torch.zeros(frames, 4, 16, 16)
    noise = comfy.sample.prepare_noise(latent, 3, None)
    out = comfy.sample.sample(patched, noise, 1, 5.0, "euler", "normal", positive, negative, latent)
    return {"recorded": seen, "ours_is_wrapper": isinstance(ours, module.FrameBatchingWrapper),
            "previous_is_recorder": getattr(ours, "previous", None) is recorder,
            "wrapped_kept_recorder": wrapped.model_options.get("model_function_wrapper") is recorder,
            "base_unchanged": base.model_options.get("model_function_wrapper") is base_wrapper,
            "finite": bool(torch.isfinite(out).all()), "shape": list(out.shape)}
