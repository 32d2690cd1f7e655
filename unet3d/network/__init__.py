"""The network: config, layers, blocks, the UNet3D forward pass, its per-call options and hooks (torch only)."""
