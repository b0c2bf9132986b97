"""optdsl: optimizer rules written as math, compiled to fused Triton kernels and PyTorch references."""

__version__ = "0.1.0"
