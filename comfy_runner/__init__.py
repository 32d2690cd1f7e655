"""Headless runner: executes ComfyUI workflows (UI or API format) with this plugin through ComfyUI's own executor.

``python -m comfy_runner run WORKFLOW.json [--set node.input=value ...] [--comfyui PATH] [--output DIR]``.
The ComfyUI host runs in a subprocess (``worker.py``) so its import side effects stay out of the caller.
"""
