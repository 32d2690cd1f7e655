"""Weight files and models: safe reading, checkpoint layouts, config inference, loading and saving, LoRA files."""
