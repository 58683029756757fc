"""diffusekit: diffusion-model methods on one small, exact core."""

__version__ = "0.1.0"
