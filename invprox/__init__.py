"""invprox: memory-efficient invertible backpropagation and unrolled solvers with flow priors.

The engine (:mod:`invprox.core`) is imported here; the other layers (``invprox.flows``,
``invprox.physics``, ``invprox.solvers``, ``invprox.data``, ``invprox.train``) are imported on use.
"""

from .core import (
    BlockError,
    DriftError,
    DriftWarning,
    Inverse,
    InvertibleChain,
    InvertibleModule,
    cuda_peak_bytes,
    is_recomputing,
    peak_rss_bytes,
    saved_tensor_bytes,
)

__version__ = "0.1.0"

__all__ = [
    "BlockError",
    "DriftError",
    "DriftWarning",
    "Inverse",
    "InvertibleChain",
    "InvertibleModule",
    "cuda_peak_bytes",
    "is_recomputing",
    "peak_rss_bytes",
    "saved_tensor_bytes",
    "__version__",
]
