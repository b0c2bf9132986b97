"""optdsl: optimizer rules written as math, compiled to fused Triton kernels and PyTorch references."""

__version__ = "0.1.0"


def load(path):
    """Compile a `.opt` spec in memory and return its optimizer class (nothing is written)."""
    from .compiler import load as _load

    return _load(path)
