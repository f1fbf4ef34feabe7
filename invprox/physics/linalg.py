"""Small batched linear-algebra helpers: conjugate gradients, power iteration, dense Gram spectra.

Everything here works on any callable linear map, so operators from other libraries (anything with
``A`` and ``A_adjoint``) can use it. A batch of images ``(B, ...)`` is treated as ``B`` independent
problems by :func:`conjugate_gradient`.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "batch_dot",
    "batch_view",
    "conjugate_gradient",
    "gram_eigenvalues",
    "power_iteration",
]

MuLike = Union[float, Tensor]


def batch_dot(u: Tensor, v: Tensor) -> Tensor:
    """Per-sample inner product.

    Args:
        u: tensor of shape ``(B, ...)``.
        v: tensor of the same shape.

    Returns:
        Tensor of shape ``(B,)``: ``sum(u[b] * v[b])``.
    """
    return (u * v).flatten(1).sum(1)


def batch_view(mu: MuLike, ref: Tensor) -> MuLike:
    """Reshape a step size so that it broadcasts against ``ref`` of shape ``(B, ...)``.

    Args:
        mu: a python number, a 0-d tensor, a one-element tensor, or a per-sample tensor of shape ``(B,)``.
        ref: the tensor ``mu`` will multiply, shape ``(B, ...)``.

    Returns:
        ``mu`` unchanged (number or 0-d tensor) or viewed as ``(B, 1, ..., 1)``.

    Raises:
        TypeError: if ``mu`` is neither a number nor a tensor.
        ValueError: if a tensor ``mu`` has a shape other than ``()``, ``(1,)`` or ``(B,)``.
    """
    if isinstance(mu, bool) or not isinstance(mu, (int, float, Tensor)):
        raise TypeError(f"mu must be a python float or a tensor, got {type(mu).__name__}")
    if not isinstance(mu, Tensor) or mu.dim() == 0:
        return mu
    if mu.numel() == 1:
        return mu.reshape(())
    if mu.dim() == 1 and mu.shape[0] == ref.shape[0]:
        return mu.reshape((-1,) + (1,) * (ref.dim() - 1))
    raise ValueError(
        f"mu must be a scalar or a per-sample tensor of shape ({ref.shape[0]},), got shape {tuple(mu.shape)}"
    )


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 1e-6


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    tol: float | None = None,
    max_iter: int = 1000,
) -> Tensor:
    """Solve ``M x = b`` for a symmetric positive definite ``M``, batched per sample.

    Each sample ``b[i]`` is its own system (inner products are taken per sample); a sample stops moving
    once ``||r_i|| <= tol * max(||b_i||, ||r0_i||)``, so its answer does not depend on the rest of the
    batch, and iteration ends when every sample has. A :class:`RuntimeWarning` is
    issued if that is not reached within ``max_iter`` iterations.

    Args:
        matvec: ``v -> M v`` on tensors of the shape of ``b`` (must act on each sample separately).
        b: right-hand side, shape ``(B, ...)``.
        x0: initial guess of the shape of ``b`` (default zeros).
        tol: relative residual tolerance (default ``1e-12`` in float64, ``1e-6`` otherwise).
        max_iter: maximum number of iterations.

    Returns:
        The solution, shape of ``b``.

    Raises:
        ValueError: if ``x0`` has the wrong shape or ``max_iter`` is not positive.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter}")
    if tol is None:
        tol = _default_tol(b.dtype)
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        if x0.shape != b.shape:
            raise ValueError(f"x0 has shape {tuple(x0.shape)}, expected {tuple(b.shape)} (that of b)")
        x = x0.clone()
        r = b - matvec(x)
    view = (-1,) + (1,) * (b.dim() - 1)
    rs = batch_dot(r, r)
    # relative to ||b||, or to the first residual where b is zero (the answer is then zero)
    thresh = tol**2 * torch.maximum(batch_dot(b, b), rs)
    p = r.clone()
    for _ in range(max_iter):
        if bool((rs <= thresh).all()):
            return x
        mp = matvec(p)
        pmp = batch_dot(p, mp)
        # samples that have converged stay where they are: a sample's answer does not depend on the others
        moving = (pmp > 0) & (rs > thresh)
        alpha = torch.where(moving, rs / torch.where(pmp > 0, pmp, torch.ones_like(pmp)), 0.0)
        x = x + alpha.reshape(view) * p
        r = r - alpha.reshape(view) * mp
        rs_new = batch_dot(r, r)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), 0.0)
        p = r + beta.reshape(view) * p
        rs = rs_new
    if not bool((rs <= thresh).all()):
        worst = float((rs / thresh.clamp_min(torch.finfo(b.dtype).tiny)).max().sqrt()) * tol
        warnings.warn(
            f"conjugate_gradient did not converge in {max_iter} iterations "
            f"(worst relative residual {worst:.3g} > tol {tol:.3g})",
            RuntimeWarning,
            stacklevel=2,
        )
    return x


def power_iteration(
    normal_op: Callable[[Tensor], Tensor],
    shape: Sequence[int],
    *,
    max_iter: int = 500,
    tol: float = 1e-10,
    dtype: torch.dtype = torch.float64,
    device: Union[str, torch.device] | None = None,
    seed: int = 0,
) -> float:
    """Largest eigenvalue of a symmetric positive semi-definite map by power iteration.

    The whole batch is one vector, so for a batched operator this is the largest eigenvalue over
    samples. The start vector is drawn from a generator seeded with ``seed`` (deterministic).

    Args:
        normal_op: ``v -> A^T A v`` on tensors of shape ``shape``.
        shape: shape of the input, e.g. ``(B, C, H, W)``.
        max_iter: maximum number of iterations.
        tol: stop when the Rayleigh quotient changes by less than ``tol`` (relative).
        dtype: dtype of the iterate (float64 by default for accuracy).
        device: device of the iterate.
        seed: seed of the start vector.

    Returns:
        The estimate of ``||A||_2^2`` (a python float; a lower bound that converges from below).
    """
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(tuple(shape), generator=gen, dtype=dtype).to(device)
    v = v / v.norm()
    lam = 0.0
    with torch.no_grad():
        for _ in range(max_iter):
            w = normal_op(v)
            lam_new = float((v * w).sum())
            norm = float(w.norm())
            if norm == 0.0:
                return 0.0
            v = w / norm
            if abs(lam_new - lam) <= tol * abs(lam_new):
                return lam_new
            lam = lam_new
    return lam


def gram_eigenvalues(
    normal_op: Callable[[Tensor], Tensor],
    sample_shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float64,
    device: Union[str, torch.device] | None = None,
    max_dim: int = 2048,
) -> Tensor:
    """Eigenvalues of ``A^T A`` from its dense matrix (small images only).

    The map is applied to the ``n`` basis images at once (as a batch of size ``n``), so it must act on
    each sample the same way (no per-sample buffers).

    Args:
        normal_op: ``v -> A^T A v``.
        sample_shape: shape of one image, e.g. ``(C, H, W)``.
        dtype: dtype of the computation.
        device: device of the computation.
        max_dim: refuse (``NotImplementedError``) when ``n = prod(sample_shape)`` is larger.

    Returns:
        Tensor of shape ``(n,)``, ascending.
    """
    n = math.prod(sample_shape)
    if n > max_dim:
        raise NotImplementedError(
            f"the dense A^T A would be {n}x{n} (> {max_dim}x{max_dim}); no closed-form log-determinant "
            "is known for this operator at this size (implement dc_logdet on the operator)"
        )
    with torch.no_grad():
        basis = torch.eye(n, dtype=dtype, device=device).reshape((n,) + tuple(sample_shape))
        m = normal_op(basis).reshape(n, n)
        m = 0.5 * (m + m.T)
        return torch.linalg.eigvalsh(m)
