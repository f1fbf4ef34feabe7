"""Errors of the engine, the flag that tells layers the engine is recomputing them, and profiler spans."""

from __future__ import annotations

import contextlib
import threading

import torch.autograd.profiler as _profiler

__all__ = ["BlockError", "DriftError", "DriftWarning", "is_recomputing"]

_local = threading.local()


def is_recomputing() -> bool:
    """True while the engine recomputes a block in its backward pass.

    Layers with side effects in ``forward`` (data-dependent initialisation, running statistics) may use it
    to skip them; the engine also restores every block's buffers after its recompute.
    """
    return getattr(_local, "depth", 0) > 0


@contextlib.contextmanager
def _recomputing():
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def span(name: str):
    """A ``torch.profiler.record_function`` span named ``name``, only while a profiler is running.

    The engine marks its parts with these (``invprox.forward``, ``invprox.backward``, ``invprox.rebuild``,
    ``invprox.vjp``, ``invprox.graph_leaves``, ``invprox.state_capture``), so ``torch.profiler`` shows where
    a step's time goes; without a profiler a span costs a flag test, not the ~10 us of a record_function.
    """
    if _profiler._is_profiler_enabled:
        return _profiler.record_function(name)
    return contextlib.nullcontext()


class DriftError(RuntimeError):
    """A rebuilt state differs from the kept one by more than the chain's tolerance."""


class DriftWarning(UserWarning):
    """Warned when a rebuilt state drifts from the kept one and the chain's check is ``"warn"``."""


class BlockError(RuntimeError):
    """A block of the chain failed or broke the block contract; the message names the block."""
