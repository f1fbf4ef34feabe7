"""Compressed sensing with a Gaussian matrix acting on each flattened image."""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import Tensor

from .base import LinearOperator, logdet_from_eigenvalues
from .linalg import MuLike, batch_view

__all__ = ["CompressedSensing"]


class CompressedSensing(LinearOperator):
    """``y = G vec(x)`` with ``G`` an ``m x n`` matrix of i.i.d. ``N(0, 1/m)`` entries, ``n = C*H*W``.

    The norm, the data-consistency inverse and its log-determinant use the thin SVD
    ``G = U diag(s) V^T`` (computed once in float64 and cached per dtype/device):
    ``(I - mu G^T G)^-1 = I + V diag(mu s^2 / (1 - mu s^2)) V^T``, ``||A||^2 = max s^2``.

    Args:
        m: number of measurements per image (positive).
        img_shape: image shape ``(C, H, W)`` (or ``(H, W)``, meaning ``C = 1``).
        generator: optional :class:`torch.Generator` for the matrix.
        seed: seed of a fresh generator, used when ``generator`` is ``None`` (else the global RNG).
        dtype: dtype of the stored matrix (buffer ``matrix``, shape ``(m, n)``).

    Shapes:
        ``A``: ``(B, C, H, W) -> (B, m)``; ``A_adjoint``: ``(B, m) -> (B, C, H, W)``.

    Raises:
        ValueError: for a non-positive ``m`` or a bad ``img_shape``.
    """

    def __init__(
        self,
        m: int,
        img_shape: Sequence[int],
        generator: torch.Generator | None = None,
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"m (number of measurements) must be a positive int, got {m!r}")
        shape = tuple(img_shape)
        if len(shape) == 2:
            shape = (1,) + shape
        if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ValueError(f"img_shape must be (C, H, W) or (H, W) positive ints, got {img_shape!r}")
        self.img_shape: Tuple[int, int, int] = shape
        self.m = m
        n = math.prod(shape)
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        gdev = generator.device if generator is not None else None
        g = torch.randn(m, n, generator=generator, dtype=torch.float64, device=gdev)
        self.register_buffer("matrix", (g / math.sqrt(m)).to(device="cpu", dtype=dtype))

    @property
    def n(self) -> int:
        """Number of pixels per image, ``C * H * W``."""
        return self.matrix.shape[1]

    def _g(self, t: Tensor) -> Tensor:
        if self.matrix.dtype == t.dtype and self.matrix.device == t.device:
            return self.matrix
        key = ("matrix", t.dtype, t.device)  # cast copy cached: no host-to-device copy per call
        if key not in self._cache:
            self._cache[key] = self.matrix.to(dtype=t.dtype, device=t.device)
        return self._cache[key]

    def A(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() < 2 or tuple(x.shape[1:]) != self.img_shape:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"CompressedSensing expects images of shape (B, {', '.join(map(str, self.img_shape))}),"
                f" got {shape}"
            )
        return x.reshape(x.shape[0], -1) @ self._g(x).T

    def A_adjoint(self, y: Tensor) -> Tensor:
        if not isinstance(y, Tensor) or y.dim() != 2 or y.shape[1] != self.m:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"CompressedSensing expects measurements of shape (B, {self.m}), got {shape}")
        return (y @ self._g(y)).reshape((y.shape[0],) + self.img_shape)

    def default_shape(self) -> Tuple[int, ...] | None:
        return (1,) + self.img_shape

    def _svd(self, dtype: torch.dtype, device: torch.device) -> Tuple[Tensor, Tensor]:
        base = ("svd", torch.float64, self.matrix.device)
        if base not in self._cache:  # one float64 factorisation, cast copies per dtype/device
            _, s, vh = torch.linalg.svd(self.matrix.double(), full_matrices=False)
            self._cache[base] = (s**2, vh)
        key = ("svd", dtype, device)
        if key not in self._cache:
            s2, vh = self._cache[base]
            self._cache[key] = (s2.to(dtype=dtype, device=device), vh.to(dtype=dtype, device=device))
        return self._cache[key]

    def _norm_sq_closed(self, shape: Tuple[int, ...] | None) -> float | None:
        s2, _ = self._svd(torch.float64, self.matrix.device)
        return float(s2.max())

    def dc_solve(self, b: Tensor, mu: MuLike) -> Tensor:
        s2, vh = self._svd(b.dtype, b.device)
        flat = b.reshape(b.shape[0], -1)
        mu_v = batch_view(mu, flat)
        coef = mu_v * s2 / (1 - mu_v * s2)
        return (flat + ((flat @ vh.T) * coef) @ vh).reshape(b.shape)

    def dc_logdet(self, x: Tensor, mu: MuLike) -> Tensor:
        s2, _ = self._svd(x.dtype, x.device)
        return logdet_from_eigenvalues(s2, x, mu)

    def extra_repr(self) -> str:
        return f"m={self.m}, img_shape={self.img_shape}"
