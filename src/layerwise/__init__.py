"""layerwise: layer-wise (Kronecker-factored) preconditioning for PyTorch."""

__version__ = "0.1.0"
