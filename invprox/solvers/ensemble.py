"""The self-ensemble of a trained solver over the left-right mirror (``invprox eval --mirror``).

A solver trained on upright images need not be mirror-symmetric: its output on a mirrored measurement,
mirrored back, is a second estimate of the same image, and the mean of the two is better than either when
their errors differ (on Table 1's faces by ~0.11 dB for each solver: ``benchmarks/TABLE1.md``). That needs
an operator that commutes with the mirror, ``A(flip x) = flip A(x)`` (denoising, a symmetric blur,
super-resolution); an inpainting mask or a sensing matrix does not, and is refused.

Example::

    run = mirror_averaged(lambda y, op: solver(y, op))
    x = run(y, physics)
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["check_mirror_symmetric", "mirror_averaged"]


def check_mirror_symmetric(op: Any, y: Tensor) -> None:
    """Raise ``ValueError`` unless ``op`` (with ``A`` and ``A_adjoint``, measurements like ``y``) commutes
    with the left-right mirror, ``A(flip x) = flip A(x)``, checked on a random image."""
    like = op.A_adjoint(y[:1])
    x = torch.rand(like.shape, generator=torch.Generator().manual_seed(0), dtype=like.dtype).to(like.device)
    a, b = op.A(x.flip(-1)), op.A(x).flip(-1)
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()) + 1e-12):
        raise ValueError(f"mirror averaging needs a forward operator that commutes with a left-right mirror "
                         f"(denoising, a symmetric blur, super-resolution); {type(op).__name__} does not "
                         f"(an inpainting mask or a sensing matrix is not mirror-symmetric)")


def mirror_averaged(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``run(y, op, *args)``: the mean of ``fn(y, op, *args)`` and ``fn(flip(y), op, *args)`` mirrored back,
    after :func:`check_mirror_symmetric` of ``op``."""

    def run(y: Tensor, op: Any, *args: Any) -> Tensor:
        check_mirror_symmetric(op, y)
        return 0.5 * (fn(y, op, *args) + fn(y.flip(-1), op, *args).flip(-1))

    return run
