"""Errors of the engine, and the flag that tells layers the engine is recomputing them."""

from __future__ import annotations

import contextlib
import threading

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


class DriftError(RuntimeError):
    """A rebuilt state differs from the kept one by more than the chain's tolerance."""


class DriftWarning(UserWarning):
    """Warned when a rebuilt state drifts from the kept one and the chain's check is ``"warn"``."""


class BlockError(RuntimeError):
    """A block of the chain failed or broke the block contract; the message names the block."""
