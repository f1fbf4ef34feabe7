"""The engine: invertible blocks, chains with memory-efficient backprop, and memory accounting."""

from .block import Inverse, InvertibleModule, check_block, forward_logdet, inverse_logdet, rebuild
from .chain import BlockError, ChainOwner, DriftError, DriftWarning, InvertibleChain, is_recomputing
from .memory import SavedTensors, cuda_peak_bytes, peak_rss_bytes, saved_tensor_bytes, tensor_bytes

__all__ = [
    "BlockError",
    "DriftError",
    "DriftWarning",
    "Inverse",
    "InvertibleChain",
    "ChainOwner",
    "InvertibleModule",
    "SavedTensors",
    "check_block",
    "cuda_peak_bytes",
    "forward_logdet",
    "inverse_logdet",
    "is_recomputing",
    "peak_rss_bytes",
    "rebuild",
    "saved_tensor_bytes",
    "tensor_bytes",
]
