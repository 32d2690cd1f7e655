"""Run inside a ComfyUI host process by the graph benchmarks (``comfy_runner.client.HostProcess.call``): a folder of
benchmark UNets added to the host's ``unet`` folders for this process only (nothing is written into the host's own
folders), and torch.compile's counters."""


def add_unet_folder(host, folder):
    host.folder_paths.add_model_folder_path("unet", folder)
    host.standins.refresh_file_lists(host.folder_paths)
    return sorted(host.folder_paths.get_filename_list("unet"))


def dynamo_counters(host):
    """torch.compile's counters in the host process: graphs compiled and graph breaks (reason -> count)."""
    from torch._dynamo.utils import counters
    return {"unique_graphs": counters["stats"].get("unique_graphs", 0),
            "graph_breaks": {str(reason)[:200]: n for reason, n in counters["graph_break"].items()}}
