"""Blur kernels and the FFT helpers of circular convolution.

Kernels are 2-D tensors ``(h, w)`` that sum to one. In a circular convolution the kernel's centre is the
pixel ``(h // 2, w // 2)`` (the middle pixel for odd sizes).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_kernel", "gaussian_kernel", "kernel_fft", "motion_kernel"]


def _size2(size: int | tuple[int, int], name: str = "size") -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)
    ):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def gaussian_kernel(
    size: int | tuple[int, int], std: float | tuple[float, float], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Isotropic (or axis-aligned) Gaussian blur kernel, normalised to sum 1.

    Args:
        size: kernel size ``k`` or ``(kh, kw)`` (odd sizes keep the blur centred).
        std: standard deviation in pixels, one number or ``(std_h, std_w)``, positive.
        dtype: dtype of the result.

    Returns:
        Tensor of shape ``(kh, kw)``.

    Raises:
        ValueError: for a non-positive size or std.
    """
    kh, kw = _size2(size)
    sh, sw = (std, std) if isinstance(std, (int, float)) else tuple(std)
    if not (sh > 0 and sw > 0):
        raise ValueError(f"std must be positive, got {std!r}")
    yy = torch.arange(kh, dtype=torch.float64) - kh // 2
    xx = torch.arange(kw, dtype=torch.float64) - kw // 2
    k = torch.exp(-0.5 * (yy[:, None] / sh) ** 2 - 0.5 * (xx[None, :] / sw) ** 2)
    return (k / k.sum()).to(dtype)


def motion_kernel(
    size: int,
    angle: float = 0.0,
    length: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Linear motion-blur kernel: a line segment through the centre, normalised to sum 1.

    Deterministic: the segment is sampled at many points and each sample is spread bilinearly over the
    four nearest pixels.

    Args:
        size: kernel size ``k`` (the kernel is ``(k, k)``).
        angle: direction of motion in degrees, counter-clockwise from the horizontal axis.
        length: length of the segment in pixels (default ``size``; clipped to the kernel).
        dtype: dtype of the result.

    Returns:
        Tensor of shape ``(size, size)``.

    Raises:
        ValueError: for a non-positive size or length.
    """
    k = _size2(size)[0]
    length = float(k if length is None else length)
    if not length > 0:
        raise ValueError(f"length must be positive, got {length!r}")
    c = k // 2
    if not (isinstance(angle, (int, float)) and math.isfinite(angle)):
        raise ValueError(f"angle must be a finite number of degrees, got {angle!r}")
    theta = math.radians(angle)
    n = max(8 * int(math.ceil(length)), 2)
    t = torch.linspace(-0.5 * (length - 1), 0.5 * (length - 1), n, dtype=torch.float64)
    px = (c + t * math.cos(theta)).clamp(0, k - 1)
    py = (c - t * math.sin(theta)).clamp(0, k - 1)
    kern = torch.zeros(k, k, dtype=torch.float64)
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=k - 1), (y0 + 1).clamp(max=k - 1)
    for yi, xi, w in (
        (y0, x0, (1 - fy) * (1 - fx)),
        (y0, x1, (1 - fy) * fx),
        (y1, x0, fy * (1 - fx)),
        (y1, x1, fy * fx),
    ):
        kern.index_put_((yi, xi), w, accumulate=True)
    return (kern / kern.sum()).to(dtype)


def check_kernel(kernel: Tensor) -> Tensor:
    """Validate a blur kernel and return it as a 2-D floating tensor ``(h, w)``.

    Accepts ``(h, w)`` or ``(1, 1, h, w)``.

    Raises:
        TypeError: if ``kernel`` is not a tensor.
        ValueError: if it has another shape, non-finite entries, or is all zero.
    """
    if not isinstance(kernel, Tensor):
        raise TypeError(f"kernel must be a torch.Tensor, got {type(kernel).__name__}")
    if kernel.dim() == 4 and kernel.shape[:2] == (1, 1):
        kernel = kernel[0, 0]
    if kernel.dim() != 2 or kernel.numel() == 0:
        raise ValueError(f"kernel must have shape (h, w) or (1, 1, h, w), got {tuple(kernel.shape)}")
    if not kernel.is_floating_point():
        kernel = kernel.float()
    if not bool(torch.isfinite(kernel).all()):
        raise ValueError("kernel has non-finite entries")
    if not bool((kernel != 0).any()):
        raise ValueError("kernel is all zero (A would be the zero operator)")
    return kernel


def kernel_fft(
    kernel: Tensor,
    hw: tuple[int, int],
    *,
    onesided: bool = True,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """FFT of a kernel zero-padded to the image size with its centre moved to pixel ``(0, 0)``.

    Args:
        kernel: ``(h, w)`` kernel.
        hw: image size ``(H, W)``, each at least the kernel's.
        onesided: ``rfft2`` layout ``(H, W // 2 + 1)`` if true, else full ``(H, W)``.
        dtype: real dtype to compute in (default the kernel's).
        device: device to compute on (default the kernel's).

    Returns:
        Complex tensor, the transfer function of the circular convolution.

    Raises:
        ValueError: if the kernel is larger than the image.
    """
    H, W = hw
    kh, kw = kernel.shape
    if kh > H or kw > W:
        raise ValueError(
            f"blur kernel of size {kh}x{kw} is larger than the image ({H}x{W}); "
            "use a smaller kernel or a larger image"
        )
    k = kernel.to(dtype=dtype or kernel.dtype, device=device or kernel.device)
    pad = k.new_zeros(H, W)
    pad[:kh, :kw] = k
    pad = torch.roll(pad, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))
    return torch.fft.rfft2(pad) if onesided else torch.fft.fft2(pad)
