"""ComfyUI glue (imports comfy; only imported from inside a running ComfyUI). One responsibility per module."""
from .frame_batching import UNet3DFrameBatching
from .latent import UNet3DEmptyLatentVideo
from .loader import UNet3DLoader
from .lora import UNet3DLoraLoader
from .patches import UNet3DAttentionSlicing, UNet3DForwardChunking, UNet3DFreeU
from .prompt_travel import UNet3DPromptTravel
from .step_cache import UNet3DStepCache

NODE_CLASS_MAPPINGS = {
    "UNet3DLoader": UNet3DLoader,
    "UNet3DEmptyLatentVideo": UNet3DEmptyLatentVideo,
    "UNet3DFrameBatching": UNet3DFrameBatching,
    "UNet3DFreeU": UNet3DFreeU,
    "UNet3DAttentionSlicing": UNet3DAttentionSlicing,
    "UNet3DForwardChunking": UNet3DForwardChunking,
    "UNet3DLoraLoader": UNet3DLoraLoader,
    "UNet3DPromptTravel": UNet3DPromptTravel,
    "UNet3DStepCache": UNet3DStepCache,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UNet3DLoader": "Load UNet3D Model",
    "UNet3DEmptyLatentVideo": "Empty UNet3D Video Latent",
    "UNet3DFrameBatching": "UNet3D Frame Batching (long videos)",
    "UNet3DFreeU": "UNet3D FreeU",
    "UNet3DAttentionSlicing": "UNet3D Attention Slicing",
    "UNet3DForwardChunking": "UNet3D Feed-Forward Chunking",
    "UNet3DLoraLoader": "Load UNet3D LoRA",
    "UNet3DPromptTravel": "UNet3D Prompt Travel (keyframed prompts)",
    "UNet3DStepCache": "UNet3D Step Cache (faster sampling)",
}

# The memory-estimate route for the web extension; registered only when a PromptServer runs (no-op headless).
from . import estimate_route as _estimate_route  # noqa: E402

_estimate_route.register()

# One warning with the remedy when ComfyUI's own LoRA loaders leave a UNet3D LoRA unapplied.
from . import core_lora_notice as _core_lora_notice  # noqa: E402

_core_lora_notice.install()
