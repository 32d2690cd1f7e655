"""Runs inside a ComfyUI host process (``comfy_runner.client.HostProcess.call``): add a folder of benchmark UNets to
the host's ``unet`` model folders for this process only (nothing is written into the host's own folders)."""


def add_unet_folder(host, folder):
    host.folder_paths.add_model_folder_path("unet", folder)
    cache = getattr(host.folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.clear()
    return sorted(host.folder_paths.get_filename_list("unet"))
