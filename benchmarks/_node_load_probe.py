"""Runs inside a ComfyUI host process (``comfy_runner.client.HostProcess.call``): load a UNet3D through the
``UNet3DLoader`` node and report time and resident memory. Used by ``benchmarks/load.py --node``."""


def load_in_node(host, unet_name, weight_dtype="default"):
    import gc
    import time

    from benchmarks._common import RssPeak

    gc.collect()
    loader = host.nodes.NODE_CLASS_MAPPINGS["UNet3DLoader"]()
    with RssPeak() as rss:
        start = time.perf_counter()
        (patcher,) = getattr(loader, loader.FUNCTION)(unet_name, weight_dtype)
        seconds = time.perf_counter() - start
    unet = patcher.model.diffusion_model
    weights = sum(t.numel() * t.element_size() for t in unet.state_dict().values())
    return {"seconds": seconds, "base_gib": rss.start / 2**30, "peak_gib": rss.peak / 2**30,
            "growth_gib": rss.growth / 2**30, "weights_gib": weights / 2**30, "dtype": str(patcher.model.get_dtype())}
