"""ComfyUI glue (imports comfy; only imported from inside a running ComfyUI). One responsibility per module."""
from .latent import UNet3DEmptyLatentVideo
from .loader import UNet3DLoader

NODE_CLASS_MAPPINGS = {
    "UNet3DLoader": UNet3DLoader,
    "UNet3DEmptyLatentVideo": UNet3DEmptyLatentVideo,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UNet3DLoader": "Load UNet3D Model",
    "UNet3DEmptyLatentVideo": "Empty UNet3D Video Latent",
}
