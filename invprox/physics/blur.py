"""Deblurring (circular convolution) and super-resolution (blur, then decimation), both through the FFT.

Both operators are diagonalised by the 2-D DFT (super-resolution after Sylvester's identity
``det(I - mu A^T A) = det(I - mu A A^T)``, where ``A A^T`` is circulant on the low-resolution grid), so
their norm, exact data-consistency inverse and log-determinant are closed forms.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .base import LinearOperator, logdet_from_eigenvalues
from .kernels import check_kernel, kernel_fft
from .linalg import MuLike, batch_view

__all__ = ["Deblurring", "SuperResolution"]


def _check_image(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} expects images of shape (B, C, H, W), got {shape}")


def _check_size(img_size: Tuple[int, int] | None) -> Tuple[int, int] | None:
    if img_size is None:
        return None
    if len(img_size) != 2 or not all(isinstance(s, int) and s >= 1 for s in img_size):
        raise ValueError(f"img_size must be a pair of positive ints (H, W), got {img_size!r}")
    return int(img_size[0]), int(img_size[1])


def _conv(x: Tensor, tf: Tensor) -> Tensor:
    return torch.fft.irfft2(torch.fft.rfft2(x) * tf, s=x.shape[-2:])


class Deblurring(LinearOperator):
    """Circular convolution with a fixed kernel, ``A x = k * x``, the same kernel on every channel.

    Args:
        kernel: blur kernel ``(h, w)`` (or ``(1, 1, h, w)``), centred at ``(h // 2, w // 2)``, at most
            the image size. Stored as the buffer ``kernel``.
        img_size: optional image size ``(H, W)``; lets :meth:`norm_sq` answer without a shape for
            kernels with entries of both signs (for non-negative kernels ``||A||^2 = (sum k)^2``).

    Shapes:
        ``A``: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, kernel: Tensor, img_size: Tuple[int, int] | None = None):
        super().__init__()
        self.register_buffer("kernel", check_kernel(kernel))
        self.img_size = _check_size(img_size)
        if self.img_size is not None:
            kernel_fft(self.kernel, self.img_size)  # raises if the kernel is larger than the image

    def _tf(self, x: Tensor, onesided: bool = True) -> Tensor:
        _check_image(x, type(self).__name__)
        return kernel_fft(self.kernel, tuple(x.shape[-2:]), onesided=onesided, dtype=x.dtype, device=x.device)

    def A(self, x: Tensor) -> Tensor:
        return _conv(x, self._tf(x))

    def A_adjoint(self, y: Tensor) -> Tensor:
        return _conv(y, self._tf(y).conj())

    def default_shape(self) -> Tuple[int, ...] | None:
        return None if self.img_size is None else (1, 1) + self.img_size

    def _norm_sq_closed(self, shape: Tuple[int, ...] | None) -> float | None:
        hw = tuple(shape[-2:]) if shape is not None else self.img_size
        if hw is not None:
            tf = kernel_fft(self.kernel, hw, dtype=torch.float64)
            return float((tf.abs() ** 2).max())
        if bool((self.kernel >= 0).all()) or bool((self.kernel <= 0).all()):
            return float(self.kernel.double().sum() ** 2)  # attained at the zero frequency
        return None

    def dc_solve(self, b: Tensor, mu: MuLike) -> Tensor:
        eig = self._tf(b).abs() ** 2
        return torch.fft.irfft2(torch.fft.rfft2(b) / (1 - batch_view(mu, b) * eig), s=b.shape[-2:])

    def dc_logdet(self, x: Tensor, mu: MuLike) -> Tensor:
        eig = self._tf(x, onesided=False).abs() ** 2
        return logdet_from_eigenvalues(eig, x, mu, multiplicity=x.shape[1])

    def extra_repr(self) -> str:
        return f"kernel={tuple(self.kernel.shape)}, img_size={self.img_size}"


class SuperResolution(LinearOperator):
    """Blur (optional), then keep every ``factor``-th pixel: ``A x = S (k * x)``.

    The adjoint is zero-filled upsampling followed by the adjoint blur. ``kernel=None`` means pure
    decimation (``||A||^2 = 1``); pass e.g. ``gaussian_kernel(2 * factor + 1, factor / 2)`` for an
    anti-aliased model.

    Args:
        factor: integer downsampling factor, at least 1; ``H`` and ``W`` must be multiples of it.
        kernel: optional blur kernel ``(h, w)`` (buffer ``kernel``), centred as in :class:`Deblurring`.
        img_size: optional high-resolution size ``(H, W)``, used by :meth:`norm_sq` without a shape.

    Shapes:
        ``A``: ``(B, C, H, W) -> (B, C, H // factor, W // factor)``.
    """

    def __init__(
        self,
        factor: int,
        kernel: Tensor | None = None,
        img_size: Tuple[int, int] | None = None,
    ):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
        self.factor = factor
        self.register_buffer("kernel", None if kernel is None else check_kernel(kernel))
        self.img_size = _check_size(img_size)
        if self.img_size is not None:
            self._check_hw(self.img_size)

    def _check_hw(self, hw: Tuple[int, int]) -> None:
        H, W = hw
        if H % self.factor or W % self.factor:
            raise ValueError(
                f"image size {H}x{W} is not divisible by the super-resolution factor {self.factor}"
            )
        if self.kernel is not None:
            kernel_fft(self.kernel, (H, W))  # raises if the kernel is larger than the image

    def _tf(self, hw: Tuple[int, int], x: Tensor, onesided: bool = True) -> Tensor:
        return kernel_fft(self.kernel, hw, onesided=onesided, dtype=x.dtype, device=x.device)

    def A(self, x: Tensor) -> Tensor:
        _check_image(x, "SuperResolution.A")
        hw = tuple(x.shape[-2:])
        self._check_hw(hw)
        if self.kernel is not None:
            x = _conv(x, self._tf(hw, x))
        return x[..., :: self.factor, :: self.factor]

    def A_adjoint(self, y: Tensor) -> Tensor:
        _check_image(y, "SuperResolution.A_adjoint")
        f = self.factor
        B, C, h, w = y.shape
        z = y.new_zeros(B, C, h * f, w * f)
        z[..., ::f, ::f] = y
        if self.kernel is not None:
            z = _conv(z, self._tf((h * f, w * f), y).conj())
        return z

    def symbol(self, hw: Tuple[int, int], x: Tensor) -> Tensor:
        """Eigenvalues of ``A A^T`` (circulant on the low-resolution grid), shape ``(H/f, W/f)``.

        ``d(p, q) = mean over the f*f aliases of |K|^2``, with ``K`` the kernel's transfer function.
        """
        self._check_hw(hw)
        f = self.factor
        h, w = hw[0] // f, hw[1] // f
        if self.kernel is None:
            return x.new_ones(h, w)
        c = self._tf(hw, x, onesided=False).abs() ** 2
        return c.reshape(f, h, f, w).mean(dim=(0, 2))

    def default_shape(self) -> Tuple[int, ...] | None:
        return None if self.img_size is None else (1, 1) + self.img_size

    def _norm_sq_closed(self, shape: Tuple[int, ...] | None) -> float | None:
        if self.kernel is None:
            return 1.0
        hw = tuple(shape[-2:]) if shape is not None else self.img_size
        if hw is None:
            return None
        return float(self.symbol(hw, self.kernel.new_zeros((), dtype=torch.float64)).max())

    def dc_solve(self, b: Tensor, mu: MuLike) -> Tensor:
        # Woodbury: (I - mu A^T A)^-1 = I + mu A^T (I - mu A A^T)^-1 A, the middle inverse by FFT.
        mu_v = batch_view(mu, b)
        d = self.symbol(tuple(b.shape[-2:]), b)
        ab = self.A(b)
        d_half = d[:, : ab.shape[-1] // 2 + 1]
        v = torch.fft.irfft2(torch.fft.rfft2(ab) / (1 - mu_v * d_half), s=ab.shape[-2:])
        return b + mu_v * self.A_adjoint(v)

    def dc_logdet(self, x: Tensor, mu: MuLike) -> Tensor:
        _check_image(x, "SuperResolution.dc_logdet")
        d = self.symbol(tuple(x.shape[-2:]), x)
        return logdet_from_eigenvalues(d, x, mu, multiplicity=x.shape[1])

    def extra_repr(self) -> str:
        k = None if self.kernel is None else tuple(self.kernel.shape)
        return f"factor={self.factor}, kernel={k}, img_size={self.img_size}"
