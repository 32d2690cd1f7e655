"""Video latents for the host: frames folded into the batch, frame windows and batched window calls."""
