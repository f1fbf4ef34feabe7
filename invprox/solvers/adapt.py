"""A trained solver used at another noise level than it was trained at, with that level known.

A solver trained at noise ``sigma_t`` and applied at ``sigma`` can use what it knows of the noise in the
two places where a noise level enters its model rather than its networks: the smooth start's weight
``alpha`` (``x_0 = argmin ||A x - y||^2 + alpha ||D x||^2``, calibrated at ``sigma_t``), and, for the flow
prox, the latent shrinkage ``lambda`` (the weight of the Gaussian latent prior against the data). Both are
weights of a prior against the data, which MAP estimation scales with the noise variance; here each is
multiplied by ``(sigma / sigma_t) ** power``, with its own power (0: unchanged).

Example::

    with noise_adapted(solver, sigma / sigma_t, start=1.0):
        x = solver(y)
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

__all__ = ["check_adaptable", "noise_adapted"]


def check_adaptable(solver: nn.Module, start: float = 0.0, lam: float = 0.0) -> None:
    """Refuse a power for a part that ``solver`` does not have (what :func:`noise_adapted` checks).

    Raises:
        ValueError: ``start`` without a smooth start, or ``lam`` without a per-level latent shrinkage.
    """
    if start and getattr(solver, "smooth_start", None) is None:
        raise ValueError("start adaptation needs a solver with the smooth start (trained with --start "
                         "smooth)")
    shrinks = list(getattr(solver, "shrink", None) or [])
    if lam and (not shrinks or not all(hasattr(s, "raw_lam") for s in shrinks)):
        raise ValueError("lambda adaptation needs the flow prox's latent shrinkage (lambda)")
    if lam and any(getattr(s, "lam_net", None) is not None for s in shrinks):
        raise ValueError("lambda adaptation scales a lambda per level; this solver's lambda is a map read "
                         "from y (--lam-y)")


@contextlib.contextmanager
def noise_adapted(solver: nn.Module, ratio: float, start: float = 0.0,
                  lam: float = 0.0) -> Iterator[nn.Module]:
    """Within the block, ``solver``'s start weight is scaled by ``ratio ** start`` and (flow prox) its
    latent shrinkages by ``ratio ** lam``; restored on exit, whatever happens inside.

    Args:
        solver: a solver of :mod:`invprox.solvers` (a smooth start for ``start``, latent shrinkages
            ``solver.shrink`` for ``lam``).
        ratio: test noise level over training noise level (positive).
        start, lam: the powers (0: that part unchanged).

    Raises:
        ValueError: a non-positive ratio, or a power for a part the solver does not have
            (:func:`check_adaptable`).
    """
    if not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"ratio must be a positive noise-level ratio, got {ratio!r}")
    check_adaptable(solver, start, lam)
    smooth = solver.smooth_start if start else None
    shrinks = list(solver.shrink) if lam else []
    saved_alpha = smooth.alpha.detach().clone() if start else None
    saved_lam = [s.raw_lam.detach().clone() for s in shrinks]
    try:
        if start:
            smooth.alpha.mul_(ratio**start)
        for s in shrinks:
            s.set_lam((s.lam.detach() * ratio**lam).tolist())
        yield solver
    finally:
        if start:
            smooth.alpha.copy_(saved_alpha)
        with torch.no_grad():
            for s, raw in zip(shrinks, saved_lam):
                s.raw_lam.copy_(raw)
