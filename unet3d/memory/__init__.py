"""Memory estimates of a UNet3D call from the config and the latent size alone, and the remedies that make it fit."""
