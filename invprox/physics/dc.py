"""The data-consistency (DC) step ``x - mu A^T (A x - y)``, its exact inverse and log-determinant.

These functions are duck-typed: ``op`` may be any object with callables ``A(x)`` and ``A_adjoint(y)``
(for instance a deepinv ``Physics``). :class:`~invprox.physics.base.LinearOperator` subclasses supply
closed forms (``dc_solve``, ``dc_logdet``, ``norm_sq``); anything else gets conjugate gradients, power
iteration and, for the log-determinant of small images, a dense eigen-decomposition.
"""

from __future__ import annotations

import weakref
from typing import Any, Dict, Sequence, Tuple, Union

import torch
from torch import Tensor

from .base import LinearOperator, dc_solve_cg, logdet_from_eigenvalues
from .linalg import MuLike, batch_view, gram_eigenvalues, power_iteration

__all__ = ["check_step_size", "dc_inverse", "dc_logdet", "dc_step", "operator_norm_sq"]

_DUCK_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _check_op(op: Any) -> None:
    if not (callable(getattr(op, "A", None)) and callable(getattr(op, "A_adjoint", None))):
        raise TypeError(
            f"{type(op).__name__} is not a linear operator: it needs callable A(x) and A_adjoint(y)"
        )


def _duck_cache(op: Any) -> Dict[Any, Any]:
    try:
        return _DUCK_CACHE.setdefault(op, {})
    except TypeError:  # not weak-referenceable or not hashable: no caching
        return {}


def _normal(op: Any):
    return lambda v: op.A_adjoint(op.A(v))


def operator_norm_sq(
    op: Any,
    shape: Sequence[int] | None = None,
    device: Union[str, torch.device] | None = None,
    dtype: torch.dtype | None = None,
) -> float:
    """``||A||_2^2`` of any operator.

    Uses ``op.norm_sq(shape)`` for a :class:`LinearOperator`; otherwise power iteration on inputs of
    ``shape`` in ``dtype`` on ``device`` (the inputs' own: a foreign operator such as deepinv's ``Blur``
    holds float32 weights and refuses float64 inputs), cached per operator object, shape, dtype and
    device. The cache assumes the operator does not change; for a foreign operator whose state changes,
    pass a new object.

    Args:
        op: the operator.
        shape: input shape ``(B, C, H, W)`` (required for foreign operators).
        device: device for power iteration.
        dtype: dtype of the power iteration (default float64; pass the inputs' dtype).

    Raises:
        ValueError: if a shape is needed and not given.
    """
    if isinstance(op, LinearOperator):
        return op.norm_sq(shape)
    _check_op(op)
    if shape is None:
        raise ValueError(f"the norm of {type(op).__name__} needs an input shape (power iteration)")
    cache = _duck_cache(op)
    dtype = torch.float64 if dtype is None else dtype
    key = ("norm_sq", tuple(shape), dtype, str(device))
    if key not in cache:
        cache[key] = power_iteration(_normal(op), tuple(shape), device=device, dtype=dtype)
    return cache[key]


def _mu_range(mu: MuLike) -> Tuple[float, float]:
    if isinstance(mu, Tensor):
        mu = mu.detach()
        return float(mu.min()), float(mu.max())
    return float(mu), float(mu)


def check_step_size(op: Any, mu: MuLike, x: Tensor) -> None:
    """Raise ``ValueError`` unless ``0 < mu < 1 / ||A||^2`` (every entry of a per-sample ``mu``).

    Args:
        op: the operator.
        mu: number or tensor of shape ``()`` or ``(B,)``.
        x: an input ``(B, C, H, W)`` (for the shape of the norm and the batch size).
    """
    batch_view(mu, x)  # shape check
    lo, hi = _mu_range(mu)
    L = operator_norm_sq(op, tuple(x.shape), device=x.device, dtype=x.dtype)
    if not (lo > 0 and hi * L < 1):
        bound = f"{1 / L:.6g}" if L > 0 else "inf"
        raise ValueError(
            f"step size mu must lie in (0, 1/||A||^2) = (0, {bound}) for the DC step to be "
            f"invertible, got values in [{lo:.6g}, {hi:.6g}]"
        )


def dc_step(op: Any, x: Tensor, y: Tensor, mu: MuLike) -> Tensor:
    """One gradient step on ``||A x - y||^2 / 2``: ``x - mu A^T (A x - y)``.

    Args:
        op: operator with ``A`` and ``A_adjoint``.
        x: current estimate ``(B, C, H, W)``.
        y: measurement, shape of ``A(x)``.
        mu: step size, number or tensor of shape ``()`` or ``(B,)``.

    Returns:
        Tensor of the shape of ``x``, differentiable in ``x``, ``y`` and ``mu``.
    """
    _check_op(op)
    return x - batch_view(mu, x) * op.A_adjoint(op.A(x) - y)


def dc_inverse(
    op: Any,
    xt: Tensor,
    y: Tensor,
    mu: MuLike,
    *,
    method: str = "auto",
    tol: float | None = None,
    max_iter: int = 1000,
    check: bool = True,
) -> Tensor:
    """Exact inverse of :func:`dc_step`: solve ``(I - mu A^T A) x = xt - mu A^T y``.

    Args:
        op: operator with ``A`` and ``A_adjoint``.
        xt: output of the DC step ``(B, C, H, W)``.
        y: measurement, shape of ``A(xt)``.
        mu: step size, number or tensor ``()``/``(B,)``, in ``(0, 1/||A||^2)``.
        method: ``"auto"`` (the operator's closed form ``dc_solve`` where it is a
            :class:`LinearOperator`, else CG) or ``"cg"`` (always conjugate gradients).
        tol: CG relative tolerance (default by dtype, see :func:`conjugate_gradient`).
        max_iter: maximum CG iterations.
        check: validate ``mu`` against ``1/||A||^2`` (costs a norm evaluation; power iteration, cached,
            for foreign operators).

    Returns:
        ``x`` with ``dc_step(op, x, y, mu) == xt``, shape of ``xt``.

    Raises:
        ValueError: if ``mu`` is outside ``(0, 1/||A||^2)`` or ``method`` is unknown.
    """
    _check_op(op)
    if method not in ("auto", "cg"):
        raise ValueError(f"method must be 'auto' or 'cg', got {method!r}")
    if check:
        check_step_size(op, mu, xt)
    b = xt - batch_view(mu, xt) * op.A_adjoint(y)
    if method == "auto" and isinstance(op, LinearOperator):
        return op.dc_solve(b, mu)
    return dc_solve_cg(op, b, mu, x0=xt, tol=tol, max_iter=max_iter)


def dc_logdet(op: Any, x: Tensor, mu: MuLike, max_dim: int = 2048) -> Tensor:
    """``log|det(I - mu A^T A)|`` per sample, the log-determinant of the DC step's Jacobian.

    Closed form for the built-in operators; for a foreign operator the dense ``A^T A`` of one image
    (``n = C*H*W <= max_dim``) is eigen-decomposed once and cached (the operator must act the same on
    every sample).

    Args:
        op: operator with ``A`` and ``A_adjoint``.
        x: an input ``(B, C, H, W)`` (shape, dtype, device).
        mu: step size, number or tensor ``()``/``(B,)``.
        max_dim: largest ``n`` for the dense fallback.

    Returns:
        Tensor of shape ``(B,)``, differentiable in ``mu``.

    Raises:
        NotImplementedError: if no closed form is known and the image is too large.
    """
    if isinstance(op, LinearOperator):
        return op.dc_logdet(x, mu)
    _check_op(op)
    cache = _duck_cache(op)
    key = ("gram_eigs", tuple(x.shape[1:]), x.dtype, x.device)
    if key not in cache:
        cache[key] = gram_eigenvalues(
            _normal(op), x.shape[1:], dtype=x.dtype, device=x.device, max_dim=max_dim
        )
    return logdet_from_eigenvalues(cache[key], x, mu)
