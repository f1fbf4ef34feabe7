"""The linear forward-operator base class, Gaussian noise, and denoising (``A = I``).

An operator is an :class:`torch.nn.Module` that holds its data (mask, kernel, matrix) as buffers, so
``.to(device)`` moves it, and that casts those buffers to the dtype and device of its input on every
call: a float32 operator works on float64 images unchanged.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .linalg import MuLike, batch_view, conjugate_gradient, gram_eigenvalues, power_iteration

__all__ = [
    "Denoising",
    "LinearOperator",
    "dc_solve_cg",
    "gaussian_noise",
    "logdet_from_eigenvalues",
    "randn",
]

SigmaLike = Union[float, Tensor]


def randn(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device] | None = None,
) -> Tensor:
    """Standard normal tensor drawn from ``generator`` (on the generator's device), then moved."""
    gdev = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=gdev).to(device)


def gaussian_noise(y: Tensor, sigma: SigmaLike, generator: torch.Generator | None = None) -> Tensor:
    """``y + sigma * n`` with ``n ~ N(0, I)``.

    Args:
        y: clean measurement, shape ``(B, ...)``.
        sigma: noise standard deviation, a number or a tensor of shape ``()`` or ``(B,)``.
        generator: optional :class:`torch.Generator` for reproducible noise.

    Returns:
        Noisy measurement of the shape of ``y``.

    Raises:
        TypeError: ``y`` is not a floating-point tensor.
        ValueError: if ``sigma`` is negative or has a bad shape.
    """
    if not isinstance(y, Tensor) or not y.is_floating_point():
        raise TypeError(f"y must be a floating-point tensor, got {type(y).__name__}"
                        + (f" of {y.dtype}" if isinstance(y, Tensor) else ""))
    if isinstance(sigma, Tensor):
        if bool((sigma < 0).any()):
            raise ValueError("sigma must be non-negative")
    elif isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0:
        raise ValueError(f"sigma must be a non-negative number or tensor, got {sigma!r}")
    s = batch_view(sigma, y)
    return y + s * randn(y.shape, generator, dtype=y.dtype, device=y.device)


def dc_solve_cg(
    op: Any,
    b: Tensor,
    mu: MuLike,
    x0: Tensor | None = None,
    tol: float | None = None,
    max_iter: int = 1000,
) -> Tensor:
    """Solve ``(I - mu A^T A) x = b`` by conjugate gradients for any object with ``A``/``A_adjoint``.

    Args:
        op: the operator (duck-typed: only ``op.A`` and ``op.A_adjoint`` are used).
        b: right-hand side, shape ``(B, C, H, W)``.
        mu: step size, a number or a tensor of shape ``()`` or ``(B,)``, in ``(0, 1/||A||^2)``.
        x0: initial guess (default ``b``).
        tol: relative residual tolerance (see :func:`conjugate_gradient`).
        max_iter: maximum number of CG iterations.

    Returns:
        ``x`` of the shape of ``b``.
    """
    mu_v = batch_view(mu, b)

    def matvec(v: Tensor) -> Tensor:
        return v - mu_v * op.A_adjoint(op.A(v))

    return conjugate_gradient(matvec, b, x0=b if x0 is None else x0, tol=tol, max_iter=max_iter)


class LinearOperator(nn.Module):
    """Base class of linear forward operators ``y = A x`` on images ``(B, C, H, W)``.

    Subclasses implement :meth:`A` and :meth:`A_adjoint`, and where they can, the closed forms
    :meth:`_norm_sq_closed`, :meth:`dc_solve` and :meth:`dc_logdet` (the defaults are power iteration,
    conjugate gradients and a dense eigen-decomposition for small images).

    Buffers are treated as constant: cached quantities (``||A||^2``, factorisations) are dropped on
    ``.to()``/``load_state_dict()``; call :meth:`clear_cache` after editing a buffer in place.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache: Dict[Any, Any] = {}

    # -- the operator ---------------------------------------------------------------------------
    def A(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Forward map, ``(B, C, H, W) -> measurement``."""
        raise NotImplementedError

    def A_adjoint(self, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Adjoint map, ``measurement -> (B, C, H, W)``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`A`."""
        return self.A(x)

    def AtA(self, x: Tensor) -> Tensor:
        """Normal operator ``A^T A x``, shape of ``x``."""
        return self.A_adjoint(self.A(x))

    # -- norm -----------------------------------------------------------------------------------
    def default_shape(self) -> Tuple[int, ...] | None:
        """Input shape ``(B, C, H, W)`` the operator knows without being told, or ``None``."""
        return None

    def _norm_sq_closed(self, shape: Tuple[int, ...] | None) -> float | None:
        """Closed-form ``||A||^2`` for inputs of ``shape`` (may be ``None``), or ``None`` if unknown."""
        return None

    def norm_sq(self, shape: Sequence[int] | None = None) -> float:
        """``||A||_2^2``, the largest eigenvalue of ``A^T A`` (cached per shape).

        Args:
            shape: input shape ``(B, C, H, W)``. Needed only where the norm depends on the image size
                and the operator does not know it (see :meth:`default_shape`).

        Returns:
            A python float: closed form where known, else power iteration.

        Raises:
            ValueError: if the norm needs an input shape and none is known.
        """
        key = ("norm_sq", None if shape is None else tuple(shape))
        if key not in self._cache:
            shp = None if shape is None else tuple(int(s) for s in shape)
            val = self._norm_sq_closed(shp)
            if val is None:
                shp = shp if shp is not None else self.default_shape()
                if shp is None:
                    raise ValueError(
                        f"{type(self).__name__}.norm_sq() needs the input shape: pass shape=(B, C, H, W)"
                    )
                val = power_iteration(self.AtA, shp, device=self._device())
            self._cache[key] = float(val)
        return self._cache[key]

    # -- measurements ---------------------------------------------------------------------------
    def noise(self, y_clean: Tensor, sigma: SigmaLike, generator: torch.Generator | None = None) -> Tensor:
        """Add Gaussian noise of std ``sigma`` (number or ``(B,)``) to a clean measurement."""
        return gaussian_noise(y_clean, sigma, generator)

    def measure(self, x: Tensor, sigma: SigmaLike = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """Noisy measurement ``A x + sigma n``, ``n ~ N(0, I)``."""
        return self.noise(self.A(x), sigma, generator)

    def adjointness_error(
        self,
        x_shape: Sequence[int],
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> float:
        """Relative error of ``<A x, v> = <x, A^T v>`` on random ``x`` of ``x_shape`` and ``v``.

        Returns:
            ``|<Ax, v> - <x, A^T v>| / max(||Ax|| ||v||, ||x|| ||A^T v||)`` (0 for an exact adjoint).
        """
        dev = self._device()
        x = randn(x_shape, generator, dtype=dtype, device=dev)
        ax = self.A(x)
        v = randn(ax.shape, generator, dtype=dtype, device=dev)
        atv = self.A_adjoint(v)
        lhs, rhs = float((ax * v).sum()), float((x * atv).sum())
        scale = max(float(ax.norm() * v.norm()), float(x.norm() * atv.norm()))
        return abs(lhs - rhs) / scale if scale > 0 else abs(lhs - rhs)

    # -- data consistency -----------------------------------------------------------------------
    def dc_solve(self, b: Tensor, mu: MuLike) -> Tensor:
        """Solve ``(I - mu A^T A) x = b`` (default: conjugate gradients).

        Args:
            b: right-hand side ``(B, C, H, W)``.
            mu: step size, number or tensor ``()``/``(B,)``, in ``(0, 1/||A||^2)``.
        """
        return dc_solve_cg(self, b, mu)

    def dc_logdet(self, x: Tensor, mu: MuLike) -> Tensor:
        """``log|det(I - mu A^T A)|`` per sample, shape ``(B,)`` (default: dense, small images only).

        Args:
            x: an input of the operator ``(B, C, H, W)`` (for its shape, dtype and device).
            mu: step size, number or tensor ``()``/``(B,)``.

        Raises:
            NotImplementedError: if the image is too large for the dense eigen-decomposition.
        """
        return logdet_from_eigenvalues(self._gram_eigs(x), x, mu)

    def _gram_eigs(self, x: Tensor) -> Tensor:
        key = ("gram_eigs", tuple(x.shape[1:]), x.dtype, x.device)
        if key not in self._cache:
            self._cache[key] = gram_eigenvalues(self.AtA, x.shape[1:], dtype=x.dtype, device=x.device)
        return self._cache[key]

    # -- caching --------------------------------------------------------------------------------
    def clear_cache(self) -> None:
        """Forget cached norms and factorisations (call after editing a buffer in place)."""
        self._cache.clear()

    def _apply(self, *args: Any, **kwargs: Any):
        self._cache.clear()
        return super()._apply(*args, **kwargs)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _device(self) -> torch.device:
        buf = next(self.buffers(), None)
        return buf.device if buf is not None else torch.device("cpu")


def logdet_from_eigenvalues(eigs: Tensor, x: Tensor, mu: MuLike, multiplicity: int = 1) -> Tensor:
    """``multiplicity * sum_i log|1 - mu * eigs_i|`` per sample, shape ``(B,)``.

    Args:
        eigs: eigenvalues of ``A^T A`` (any shape; all are summed).
        x: reference input ``(B, ...)`` for the batch size, dtype and device.
        mu: number or tensor ``()``/``(B,)``.
        multiplicity: how many times each eigenvalue repeats (e.g. channels).
    """
    eigs = eigs.to(dtype=x.dtype, device=x.device).reshape(1, -1)
    mu_v = batch_view(mu, eigs.expand(x.shape[0], -1))
    ld = torch.log(torch.abs(1 - mu_v * eigs)).sum(1) * multiplicity
    return ld.expand(x.shape[0]) if ld.shape[0] == 1 else ld


class Denoising(LinearOperator):
    """The identity, ``A x = x`` (measurement of the shape of ``x``). ``||A||^2 = 1``."""

    def A(self, x: Tensor) -> Tensor:
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:
        return y

    def _norm_sq_closed(self, shape: Tuple[int, ...] | None) -> float | None:
        return 1.0

    def dc_solve(self, b: Tensor, mu: MuLike) -> Tensor:
        return b / (1 - batch_view(mu, b))

    def dc_logdet(self, x: Tensor, mu: MuLike) -> Tensor:
        return logdet_from_eigenvalues(x.new_ones(1), x, mu, multiplicity=x[0].numel())
