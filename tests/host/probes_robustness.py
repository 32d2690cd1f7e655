"""Functions run INSIDE the ComfyUI host process (``HostProcess.call``) for the robustness tests. They return plain
JSON data."""


def model_folders(host):
    """The first folder of each model kind the tests write hostile files into."""
    return {kind: host.folder_paths.get_folder_paths(kind)[0] for kind in ("unet", "diffusers", "loras")}


def refresh(host):
    """Forget ComfyUI's cached file lists, so files written by the test show up in the node lists at once."""
    cache = getattr(host.folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.clear()
    return True


def total_memory(host):
    return int(host.mm.get_total_memory(host.mm.get_torch_device()))
