"""ComfyUI entry point of the UNet3D (ModelScope text-to-video / Zeroscope) node pack.

ComfyUI imports this package from ``custom_nodes/`` and reads the three names below. Imported anywhere else (pytest,
a plain ``python``), it exposes empty mappings and says why, instead of failing on the missing host.
"""
import importlib.util
import logging

WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}


def _host_present() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("comfy", "folder_paths"))


if not __package__:
    logging.getLogger("unet3d").info("UNet3D node pack: imported as a plain module, no nodes registered")
elif not _host_present():
    logging.getLogger("unet3d").info(
        "UNet3D node pack: ComfyUI (comfy, folder_paths) is not importable, so no nodes are registered. Install this "
        "folder under ComfyUI/custom_nodes/ or run a workflow with `python -m comfy_runner run WORKFLOW.json`.")
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
