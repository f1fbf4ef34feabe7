"""Where an unrolled solver starts: the first estimate ``x_0`` computed from the measurement.

The seed paper starts the flow solver at the flow's mode ``g(0)`` and CNN baselines start at the
back-projection ``A^T y``. Both are poor starts on their own: the mode is one average face (about 11 dB
on unseen faces), and ``A^T y`` keeps all the noise. :class:`SmoothStart` is a classical estimate that any
solver can begin from, for any linear operator given as ``A`` and ``A_adjoint``:

    x_0 = argmin_x ||A x - y||^2 + alpha ||D x||^2,

with ``D`` the forward differences along height and width (replicate boundary), solved by conjugate
gradients on ``(A^T A + alpha D^T D) x = A^T y``. For denoising it is a low-pass filter, for inpainting a
smooth (harmonic) fill of the holes, for deblurring a regularised deconvolution. ``alpha`` is set from a
few training pairs by :meth:`SmoothStart.calibrate` (no backprop) and saved with the solver.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..physics.linalg import conjugate_gradient

__all__ = ["SmoothStart", "difference_gram"]

_ALPHA_GRID = (0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def difference_gram(x: Tensor) -> Tensor:
    """``D^T D x`` for forward differences along the last two axes (replicate boundary).

    ``<x, D^T D x> = sum of squared differences of neighbouring pixels``; shape of ``x``.
    """
    out = torch.zeros_like(x)
    dh = x[..., 1:, :] - x[..., :-1, :]
    out[..., 1:, :] += dh
    out[..., :-1, :] -= dh
    dw = x[..., :, 1:] - x[..., :, :-1]
    out[..., :, 1:] += dw
    out[..., :, :-1] -= dw
    return out


class SmoothStart(nn.Module):
    """``x_0 = argmin ||A x - y||^2 + alpha ||D x||^2`` (see the module docstring), in image space.

    Args:
        alpha: smoothness weight (> 0); kept as a buffer, so a saved solver keeps its calibrated value.
        iters: conjugate-gradient iterations at most (relative tolerance 1e-4; 1e-10 in float64).

    Shapes:
        ``y``: the measurement, shape of ``physics.A(x)``; output: shape of ``physics.A_adjoint(y)``,
        ``(B, C, H, W)``. Gradients reach ``y`` (not ``alpha``, which is calibrated, not trained).

    Example:
        >>> import torch
        >>> from invprox.physics import Denoising
        >>> x = torch.full((1, 1, 16, 16), 0.5)
        >>> y = x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        >>> x0 = SmoothStart(alpha=2.0)(y, Denoising())
        >>> bool((x0 - x).square().mean() < 0.2 * (y - x).square().mean())
        True
    """

    def __init__(self, alpha: float = 1.0, iters: int = 300):
        super().__init__()
        self.register_buffer("alpha", torch.tensor(_check_alpha(alpha), dtype=torch.float64))
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f"iters must be a positive int, got {iters!r}")
        self.iters = iters

    def solve(self, y: Tensor, physics: Any, alpha: float | None = None) -> Tensor:
        """The estimate for ``alpha`` (default: the stored one); differentiable in ``y``.

        ``x_0 = M^-1 A^T y`` with ``M = A^T A + alpha D^T D`` symmetric, so the gradient with respect to
        ``y`` is ``A M^-1 g``: one more conjugate-gradient solve in the backward pass, no stored iterations.
        """
        a = float(self.alpha) if alpha is None else alpha
        return _SmoothSolve.apply(y, physics, a, self.iters)

    def forward(self, y: Tensor, physics: Any) -> Tensor:
        return self.solve(y, physics)

    @torch.no_grad()
    def calibrate(
        self, y: Tensor, x: Tensor, physics: Any, grid: Sequence[float] = _ALPHA_GRID
    ) -> float:
        """Set ``alpha`` to the value of ``grid`` with the lowest mean squared error on ``(y, x)`` pairs.

        Args:
            y: measurements of the clean images ``x`` (image space ``[0, 1]``, ``(B, C, H, W)``).
            physics: their operator.
            grid: candidate values of ``alpha``.

        Returns:
            The chosen ``alpha``.
        """
        best = min(grid, key=lambda a: float(((self.solve(y, physics, _check_alpha(a)) - x) ** 2).mean()))
        self.alpha.fill_(float(best))
        return float(best)

    def extra_repr(self) -> str:
        return f"alpha={float(self.alpha):.4g}, iters={self.iters}"


def _solve_normal(physics: Any, b: Tensor, alpha: float, iters: int) -> Tensor:
    """``(A^T A + alpha D^T D)^-1 b`` by conjugate gradients (relative tolerance 1e-4, 1e-10 in float64)."""

    def matvec(v: Tensor) -> Tensor:
        return physics.A_adjoint(physics.A(v)) + alpha * difference_gram(v)

    tol = 1e-10 if b.dtype == torch.float64 else 1e-4
    with warnings.catch_warnings():  # a start need not be solved to the last digit
        warnings.simplefilter("ignore", RuntimeWarning)
        return conjugate_gradient(matvec, b, x0=b.clone(), tol=tol, max_iter=iters)


class _SmoothSolve(torch.autograd.Function):
    """``y -> M^-1 A^T y`` with the exact linear backward ``g -> A M^-1 g``."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, physics: Any, alpha: float, iters: int) -> Tensor:
        with torch.no_grad():
            b = physics.A_adjoint(y)
            if b.dim() < 3:
                raise ValueError(f"A_adjoint(y) must be image-shaped (B, ..., H, W), got {tuple(b.shape)}")
            x = _solve_normal(physics, b, alpha, iters)
        ctx.physics, ctx.alpha, ctx.iters = physics, alpha, iters
        return x

    @staticmethod
    def backward(ctx: Any, g: Tensor):
        with torch.no_grad():
            gy = ctx.physics.A(_solve_normal(ctx.physics, g, ctx.alpha, ctx.iters))
        return gy, None, None, None


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
        math.isfinite(alpha) and alpha > 0
    ):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    return float(alpha)
