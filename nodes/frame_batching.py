"""``UNet3DFrameBatching``: sample videos of any length in windows of frames, in bounded batches.

Glue only: the window layout and fuse weights are ``unet3d.video.windows``, the batching and fusion
``unet3d.video.frame_batching``.
The node clones the MODEL and installs a model function wrapper (``set_model_unet_function_wrapper``, the same hook in
every ComfyUI version), so samplers, FreeU / slicing / chunking patches and core nodes are untouched: the wrapper only
decides which rows of the ``(k*F, C, h, w)`` batch reach ``apply_model`` together. A wrapper already on the model
(another node's) is kept and called inside ours, once per window batch. With ``freenoise`` on, the node also installs
FreeNoise noise rescheduling (``nodes.freenoise``); off, nothing but the wrapper is installed.
"""
from __future__ import annotations

import logging

from ..unet3d.errors import SettingError, UNet3DError
from ..unet3d.video.folding import frame_layout
from ..unet3d.video.frame_batching import FrameCall, fuse_calls, plan_calls
from ..unet3d.video.freenoise import MAX_SEED
from ..unet3d.video.windows import DEFAULT_CONTEXT_LENGTH, DEFAULT_CONTEXT_OVERLAP, FUSE_METHODS, WindowSettings
from .freenoise import add_freenoise, has_freenoise

MAX_FRAMES = 4096
log = logging.getLogger("unet3d")


def call_previous(apply_model, args):
    return apply_model(args["input"], args["timestep"], **args["c"])


def conds_for_call(c: dict, call: FrameCall) -> dict:
    """The ``c`` dict for one call: per-frame / per-video tensors sliced, per-chunk lists subset, the window's frame
    count as ``num_video_frames`` (when the model gets one), everything else (constants, control objects) kept."""
    out = {key: call.take(value) for key, value in c.items() if key != "transformer_options"}
    if "num_video_frames" in c:
        out["num_video_frames"] = call.frames
    options = dict(c.get("transformer_options") or {})
    if "cond_or_uncond" in options:
        options["cond_or_uncond"] = call.take_list(options["cond_or_uncond"])
    if isinstance(options.get("uuids"), (list, tuple)):
        options["uuids"] = call.take_list(options["uuids"])
    if "sigmas" in options:
        options["sigmas"] = call.take(options["sigmas"])
    out["transformer_options"] = options
    return out


CORE_WINDOWS_NOTICE = ("UNet3D Frame Batching and ComfyUI's context windows (ContextWindowsManual) are both on this "
                       "model. The core context windows act first and hand the model windows of their "
                       "context_length, so UNet3D Frame Batching only splits those further (max_batch_rows) and its "
                       "own windows, overlap and fuse method do not apply. Keep one of the two nodes.")
FREENOISE_LOST_NOTICE = ("UNet3D Frame Batching: freenoise is on, but a node after it replaced the model's sampling "
                         "object (e.g. ModelSamplingDiscrete), so the noise is not rescheduled. Put UNet3D Frame "
                         "Batching after that node.")


def check_freenoise_videos(layout, context_length: int) -> None:
    """FreeNoise reorders the noise rows of one video; refuse before any UNet work when the rows hold several videos
    and the reordering mixed them."""
    rows = layout.videos_per_chunk * layout.frames
    if layout.videos_per_chunk > 1 and rows > context_length:
        raise UNet3DError(
            f"UNet3D Frame Batching: freenoise reschedules the noise of one video, and this sampler run holds "
            f"{layout.videos_per_chunk} videos of {layout.frames} frames side by side; their noise would be mixed. "
            f"Sample one video per run (batch_size 1 on Empty UNet3D Video Latent) or turn freenoise off.")


class FrameBatchingWrapper:
    """The model function wrapper. Plain data plus the wrapper it replaced; ``to`` forwards to that one, since
    ComfyUI moves a wrapper that has ``to`` with the model."""

    def __init__(self, settings: WindowSettings, max_batch_rows: int, previous=None, freenoise: bool = False):
        self.settings = settings
        self.max_batch_rows = max_batch_rows
        self.previous = previous
        self.freenoise = freenoise
        self.told_about_core_windows = False
        self.told_about_freenoise = False

    def to(self, device):
        if hasattr(self.previous, "to"):
            self.previous = self.previous.to(device)
        return self

    def __call__(self, apply_model, args):
        inner = self.previous if self.previous is not None else call_previous
        x, c, cond_or_uncond = args["input"], args["c"], args["cond_or_uncond"]
        if "context_window" in (c.get("transformer_options") or {}) and not self.told_about_core_windows:
            self.told_about_core_windows = True   # once per model, not once per window and step
            log.warning(CORE_WINDOWS_NOTICE)
        layout = frame_layout(x.shape[0], len(cond_or_uncond), c.get("num_video_frames"))
        if self.freenoise:
            check_freenoise_videos(layout, self.settings.context_length)
            if not self.told_about_freenoise and not has_freenoise(apply_model):
                self.told_about_freenoise = True
                log.warning(FREENOISE_LOST_NOTICE)
        calls = plan_calls(layout, self.settings.windows(layout.frames), self.max_batch_rows)

        def apply_call(call: FrameCall):
            if call.whole:
                return inner(apply_model, args)
            call_args = dict(args)
            call_args.update(input=call.take(x), timestep=call.take(args["timestep"]), c=conds_for_call(c, call),
                             cond_or_uncond=call.take_list(cond_or_uncond))
            return inner(apply_model, call_args)
        return fuse_calls(apply_call, calls)


def check_batch_rows(max_batch_rows: int, context_length: int) -> None:
    if max_batch_rows and max_batch_rows < context_length:
        raise SettingError(f"max_batch_rows ({max_batch_rows}) is smaller than context_length ({context_length}); "
                         f"one window of one video is the smallest UNet call. Use 0 (no cap) or at least "
                         f"{context_length}, or lower context_length.")


def _int(default, minimum, maximum, tooltip):
    return ("INT", {"default": default, "min": minimum, "max": maximum, "step": 1, "tooltip": tooltip})


class UNet3DFrameBatching:
    DESCRIPTION = ("Sample long videos in overlapping windows of frames, fused per frame, with a cap on how many "
                   "frame rows reach the UNet at once: videos of any length in bounded memory. Stack it with any "
                   "sampler and with FreeU / attention slicing / chunking nodes. freenoise keeps the windows' "
                   "content consistent.")
    CATEGORY = "video/unet3d"
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A copy of the model that samples in frame windows (the input model is unchanged).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The UNet3D model to sample in frame windows."}),
            "context_length": _int(DEFAULT_CONTEXT_LENGTH, 1, MAX_FRAMES,
                                   "Frames the UNet sees at once. ModelScope / Zeroscope were trained on 16-24. "
                                   "Videos this long or shorter are sampled exactly as without this node."),
            "context_overlap": _int(DEFAULT_CONTEXT_OVERLAP, 0, MAX_FRAMES - 1,
                                    "Minimum frames shared by neighbouring windows (smaller than context_length). "
                                    "More overlap: smoother transitions, more UNet calls."),
            "context_stride": _int(1, 1, 8,
                                   "1 = contiguous windows only. N > 1 adds windows over every 2nd, 4th, ... "
                                   "2^(N-1)th frame for long-range consistency (more UNet calls)."),
            "closed_loop": ("BOOLEAN", {"default": False,
                                        "tooltip": "Windows wrap from the last frame to the first, for seamless "
                                                   "looping videos."}),
            "fuse_method": (list(FUSE_METHODS), {"default": "pyramid",
                                                 "tooltip": "How overlapping windows blend per frame (weights sum to "
                                                            "one): flat = plain average, pyramid = favour window "
                                                            "centres, overlap-linear = linear cross-fade in the "
                                                            "overlaps."}),
            "max_batch_rows": _int(0, 0, 1 << 16,
                                   "Most rows (frames x cond/uncond videos) sent to the UNet in one call; 0 = no "
                                   "cap. Lower values split cond/uncond and windows into several calls: less memory, "
                                   "slower. Must be 0 or at least context_length."),
        }, "optional": {
            "freenoise": ("BOOLEAN", {"default": False,
                                      "tooltip": "FreeNoise: every window after the first reuses the first window's "
                                                 "noise, shuffled locally, so content stays consistent across "
                                                 "windows. Costs nothing per step. One video per run; off = exactly "
                                                 "as without it."}),
            "freenoise_seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED,
                                       "tooltip": "Seed of the FreeNoise shuffles (the noise itself comes from the "
                                                  "sampler's seed)."}),
        }}

    def patch(self, model, context_length, context_overlap, context_stride, closed_loop, fuse_method,
              max_batch_rows, freenoise=False, freenoise_seed=0):
        try:
            settings = WindowSettings(context_length, context_overlap, context_stride, bool(closed_loop), fuse_method)
        except ValueError as err:
            raise SettingError(f"UNet3D Frame Batching: {err}") from None
        check_batch_rows(max_batch_rows, context_length)
        if model.model_options.get("context_handler") is not None:
            log.warning(CORE_WINDOWS_NOTICE)
        patched = model.clone()
        previous = patched.model_options.get("model_function_wrapper")
        patched.set_model_unet_function_wrapper(FrameBatchingWrapper(settings, max_batch_rows, previous,
                                                                     bool(freenoise)))
        if freenoise:
            add_freenoise(patched, context_length, context_overlap, int(freenoise_seed))
        return (patched,)
