"""Memory accounting that works on any device.

* :func:`saved_tensor_bytes`: bytes autograd keeps for the backward pass of a callable, counted with
  saved-tensor hooks (each storage once), optionally excluding parameters. This is the activation memory of
  a training step and is the same on CPU and GPU.
* :func:`cuda_peak_bytes`: peak CUDA memory allocated while a callable runs (CUDA only).
* :func:`peak_rss_bytes`: the peak resident set size of this process (CPU), with :func:`reset_peak_rss`
  and :func:`rss_now_bytes` to measure one step's peak on Linux.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "SavedTensors",
    "cuda_peak_bytes",
    "peak_rss_bytes",
    "reset_peak_rss",
    "rss_now_bytes",
    "ru_maxrss_bytes",
    "saved_tensor_bytes",
    "tensor_bytes",
]


def _key(t: Tensor):
    s = t.untyped_storage()
    return (str(t.device), s.data_ptr())


def tensor_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (parameters, optimizer state, ...)."""
    seen = {}
    for t in tensors:
        seen[_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


@dataclass
class SavedTensors:
    """Tensors saved for backward inside the context, counted once per storage.

    Attributes:
        bytes: total bytes of distinct storages saved, excluding those of ``exclude``.
        count: number of saves (a tensor saved twice counts twice here, once in ``bytes``).
        excluded_bytes: bytes of saved storages that belong to ``exclude`` (typically parameters).
    """

    exclude: Tuple[Tensor, ...] = ()
    bytes: int = 0
    count: int = 0
    excluded_bytes: int = 0

    def __post_init__(self):
        self._skip = {_key(t) for t in self.exclude}
        self._seen = set()
        self._ctx = None

    def _pack(self, t: Tensor):
        self.count += 1
        k = _key(t)
        if k not in self._seen:
            self._seen.add(k)
            n = t.untyped_storage().nbytes()
            if k in self._skip:
                self.excluded_bytes += n
            else:
                self.bytes += n
        return t

    def __enter__(self) -> SavedTensors:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)


def saved_tensor_bytes(
    fn: Callable[..., Any], *args: Any, exclude: Iterable[Tensor] = (), **kwargs: Any
) -> Tuple[Any, SavedTensors]:
    """Run ``fn(*args, **kwargs)`` and count the bytes it saves for backward.

    Args:
        fn: any callable building an autograd graph (a model's forward, a loss).
        exclude: tensors (usually ``model.parameters()``) whose storages are not counted as activations.

    Returns:
        ``(fn's result, SavedTensors)``; keep the result alive if you will call backward on it.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(100, 100)
        >>> out, saved = saved_tensor_bytes(lin, torch.randn(8, 100), exclude=lin.parameters())
        >>> saved.bytes  # the input, 8 x 100 float32
        3200
    """
    with SavedTensors(tuple(exclude)) as rec:
        out = fn(*args, **kwargs)
    return out, rec


def cuda_peak_bytes(fn: Callable[[], Any], device: Optional[torch.device] = None) -> Tuple[Any, int]:
    """Peak CUDA memory allocated during ``fn()``, above what was allocated before it.

    Raises:
        RuntimeError: when CUDA is not available.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_peak_bytes needs CUDA; use saved_tensor_bytes on other devices")
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    return out, torch.cuda.max_memory_allocated(device) - base


def ru_maxrss_bytes() -> int:
    """``resource.getrusage(RUSAGE_SELF).ru_maxrss`` in bytes (0 where ``resource`` is missing).

    Caveat (Linux): in a process started by ``subprocess`` this starts at the *parent's* peak RSS, because
    ``exec`` records the peak of the memory map it replaces (the parent's, shared by ``vfork``) in the
    process's rusage and no call resets it. A child launched from a large parent therefore reads the
    parent's peak until it outgrows it; :func:`peak_rss_bytes` avoids this where it can.
    """
    try:
        import resource
    except ImportError:  # Windows
        return 0
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak RSS of this process's own memory map (Linux ``VmHWM``), else :func:`ru_maxrss_bytes`."""
    kib = _proc_status_kib("VmHWM")
    return kib * 1024 if kib is not None else ru_maxrss_bytes()


def reset_peak_rss() -> bool:
    """Reset the peak RSS (``VmHWM``) to the current RSS (Linux >= 4.0, ``/proc/self/clear_refs``).

    Returns ``False`` where this is not possible; :func:`peak_rss_bytes` then keeps the older peak.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_now_bytes() -> int:
    """Current resident set size in bytes (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
