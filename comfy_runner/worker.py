"""The host process: imports a ComfyUI tree, loads its nodes (this plugin included) and executes prompts through
ComfyUI's own ``PromptExecutor`` (as ComfyUI's ``main.py`` does), answering JSON requests one per line.

Run as a script with the ComfyUI root as working directory (``client.HostProcess`` does that), never imported by the
plugin or the tests: ComfyUI's import side effects (sys.argv, its top-level ``nodes``/``execution``/``server``
modules, os.chdir) stay inside this process. Protocol: one JSON object per line on stdin; one JSON line per answer
on the original stdout. Everything ComfyUI prints goes to stderr.
"""
import argparse
import asyncio
import importlib.util
import inspect
import json
import os
import sys
import time
import traceback
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_sibling(name):
    """Import comfy_runner/<name>.py by path, under a name that cannot collide with ComfyUI's modules."""
    spec = importlib.util.spec_from_file_location(f"_unet3d_runner_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--comfyui", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--plugin-root", required=True, help="the repo root; appended (last) to sys.path for unet3d")
    p.add_argument("--host-args", default="", help="ComfyUI command-line flags, space separated")
    return p.parse_args()


class FakeServer:
    client_id = "comfy_runner"          # non-None: the executor then reports "executing" events to send_sync
    last_node_id = None
    last_prompt_id = None
    sockets_metadata = {}

    def __init__(self):
        self.timeline = []                      # (node id or None, time) of "executing" events

    def send_sync(self, event, data, sid=None):
        if event == "executing" and isinstance(data, dict):
            self.timeline.append((data.get("node"), time.time()))
            if data.get("node"):
                print(f"[comfy_runner] executing node {data['node']}", file=sys.stderr, flush=True)

    def node_seconds(self, end):
        marks = self.timeline + [(None, end)]
        return {n: round(marks[i + 1][1] - t, 3) for i, (n, t) in enumerate(marks[:-1]) if n}

    def queue_updated(self):
        pass


class Host:
    def __init__(self, args):
        self.args = args
        root = os.path.abspath(args.comfyui)
        sys.path[0] = root                      # not comfy_runner/: ComfyUI's top-level modules must win
        os.chdir(root)
        import torch
        flags = args.host_args.split() if args.host_args else []
        if not any(f in flags for f in ("--cpu", "--gpu-only", "--highvram", "--normalvram")) and \
                not torch.cuda.is_available():
            flags.append("--cpu")
            if not any(f in flags for f in ("--fp16-text-enc", "--fp32-text-enc", "--fp8_e4m3fn-text-enc")):
                flags.append("--fp32-text-enc")  # ComfyUI's CPU default (fp16) is several times slower on CPU
        sys.argv = [sys.argv[0]] + flags
        import comfy.options
        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses sys.argv now, before model_management decides the device)
        import folder_paths
        if os.path.isfile(os.path.join(root, "utils", "__init__.py")):
            import utils.extra_config  # noqa: F401  as main.py does: before nodes.py puts comfy/ (with its own
            #                            utils.py) first on sys.path
        import comfy.model_management as mm
        import comfy.utils
        import execution

        import nodes
        self.torch, self.folder_paths, self.nodes, self.execution, self.mm = torch, folder_paths, nodes, execution, mm
        os.makedirs(args.output, exist_ok=True)
        folder_paths.set_output_directory(os.path.abspath(args.output))
        self.server = FakeServer()
        if hasattr(nodes, "init_extra_nodes"):
            asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        else:
            nodes.init_custom_nodes()

        def hook(value, total, preview=None, *a, **kw):
            mm.throw_exception_if_processing_interrupted()
        comfy.utils.set_progress_bar_global_hook(hook)
        if args.plugin_root not in sys.path:
            sys.path.append(args.plugin_root)  # last: `import unet3d` works, ComfyUI's `nodes` keeps winning
        self.workflow = _load_sibling("workflow")
        self.standins = _load_sibling("standins")
        self.executor = None
        self.version = self._version()

    def _version(self):
        try:
            import comfyui_version
            return comfyui_version.__version__
        except ImportError:
            return "march-2024" if not hasattr(self.nodes, "init_extra_nodes") else "unknown"

    def new_executor(self):
        kw = {}
        if "cache_args" in inspect.signature(self.execution.PromptExecutor).parameters:
            kw["cache_args"] = {"lru": 0, "ram": 0}
        self.executor = self.execution.PromptExecutor(self.server, **kw)
        return self.executor

    def validate(self, prompt):
        v = self.execution.validate_prompt
        try:
            if inspect.iscoroutinefunction(v):
                return asyncio.run(v(str(uuid.uuid4()), prompt, None))
            return v(prompt)
        except KeyError as exc:  # March 2024 raises for an unknown class_type
            return False, {"type": "invalid_prompt", "message": f"unknown node type {exc}"}, [], {}

    def raw_output(self, node_id):
        ex = self.executor
        if isinstance(getattr(ex, "outputs", None), dict):
            return ex.outputs.get(node_id)
        entry = ex.caches.outputs.get(node_id)
        if inspect.isawaitable(entry):
            entry = asyncio.run(entry)
        return getattr(entry, "outputs", entry)

    def run(self, prompt, fresh=False, capture=None, capture_dir=None, **_):
        if fresh or self.executor is None:
            self.new_executor()
        ok, error, outputs, node_errors = self.validate(prompt)
        if not ok:
            return {"ok": False, "error": error, "node_errors": node_errors}
        t0 = time.time()
        self.server.timeline = []
        ex = self.executor
        ex.execute(prompt, str(uuid.uuid4()), {"client_id": self.server.client_id}, outputs)
        seconds = time.time() - t0
        node_seconds = self.server.node_seconds(time.time())
        messages = [[e, _jsonable(d)] for e, d in ex.status_messages]
        if not ex.success:
            err = next((d for e, d in ex.status_messages if e in ("execution_error", "execution_interrupted")), {})
            err = {k: v for k, v in err.items() if k not in ("current_inputs", "current_outputs")}
            return {"ok": False, "error": _jsonable(err), "messages": messages[-3:], "seconds": seconds}
        ui = ex.history_result["outputs"] if hasattr(ex, "history_result") else ex.outputs_ui
        captured = {}
        for node_id in capture or []:
            raw = self.raw_output(node_id)
            path = os.path.join(capture_dir, f"{node_id}.pt")
            self.torch.save(_tensors(raw), path)
            captured[node_id] = path
        return {"ok": True, "outputs": _jsonable(ui), "captured": captured, "seconds": seconds,
                "node_seconds": node_seconds,
                "messages": [m for m in messages if m[0] in ("execution_cached", "execution_start")],
                "output_dir": self.folder_paths.get_output_directory()}

    def object_info(self, **_):
        return {"classes": sorted(self.nodes.NODE_CLASS_MAPPINGS)}

    def convert(self, workflow, **_):
        return {"prompt": self.workflow.ui_to_api(workflow, self.nodes.NODE_CLASS_MAPPINGS)}

    def call(self, file, func, kwargs=None, **_):
        spec = importlib.util.spec_from_file_location(f"_unet3d_probe_{abs(hash(file))}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with self.torch.inference_mode():       # as the executor runs nodes
            return {"ok": True, "result": getattr(module, func)(self, **(kwargs or {}))}

    def provision_standins(self, **kwargs):
        return self.standins.provision(self, **kwargs)

    def prepare(self, workflow, sets=(), cache_dir=None, standins=True, quick=True, **_):
        """UI or API workflow -> API prompt with --set values applied and, if asked, stand-ins for missing models."""
        prompt = self.workflow.ui_to_api(workflow, self.nodes.NODE_CLASS_MAPPINGS)
        self.workflow.apply_sets(prompt, list(sets), self.nodes.NODE_CLASS_MAPPINGS)
        notes = []
        if standins:
            prompt, notes = self.standins.substitute(self, prompt, cache_dir, quick=quick)
        return {"prompt": prompt, "notes": notes}


def _tensors(raw):
    """Raw node outputs -> nested lists/dicts of CPU tensors (LATENT dicts keep their keys)."""
    if hasattr(raw, "detach"):
        return raw.detach().cpu()
    if isinstance(raw, dict):
        return {k: _tensors(v) for k, v in raw.items() if hasattr(v, "detach") or isinstance(v, (list, dict))}
    if isinstance(raw, (list, tuple)):
        return [_tensors(v) for v in raw]
    return None


def _jsonable(obj):
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        if isinstance(obj, dict):
            return {str(k): _jsonable(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [_jsonable(v) for v in obj]
        return repr(obj)


def main():
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                                # stray prints (and C-level output) go to stderr
    sys.stdout = sys.stderr
    args = parse_args()

    def answer(obj):
        proto.write(json.dumps(_jsonable(obj)) + "\n")
        proto.flush()

    try:
        host = Host(args)
    except Exception as exc:  # noqa: BLE001 - reported to the client, which raises
        answer({"ok": False, "error": f"ComfyUI host failed to start: {exc!r}", "traceback": traceback.format_exc()})
        return 1
    answer({"ok": True, "ready": True, "version": host.version, "classes": len(host.nodes.NODE_CLASS_MAPPINGS),
            "unet3d_nodes": [c for c in host.nodes.NODE_CLASS_MAPPINGS if c.startswith("UNet3D")]})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        cmd = request.pop("cmd")
        if cmd == "quit":
            answer({"ok": True})
            break
        try:
            handler = {"run": host.run, "convert": host.convert, "call": host.call,
                       "object_info": host.object_info, "standins": host.provision_standins,
                       "prepare": host.prepare}[cmd]
            result = handler(**request)
            result.setdefault("ok", True)
            answer(result)
        except host.workflow.WorkflowError as exc:   # the user's workflow or --set: a message, no traceback
            answer({"ok": False, "error": str(exc), "kind": "WorkflowError"})
        except Exception as exc:  # noqa: BLE001
            answer({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
