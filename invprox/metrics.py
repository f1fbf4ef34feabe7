"""Image quality metrics, per image: PSNR and SSIM.

SSIM follows Wang et al. (2004) exactly as ``skimage.metrics.structural_similarity`` computes it
with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``: an 11x11 Gaussian window
(sigma 1.5, truncated at 3.5 sigma), constants ``K1 = 0.01``, ``K2 = 0.03``, the SSIM map averaged
over the positions where the window fits entirely inside the image, and over channels. Both metrics
are differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["mse", "psnr", "ssim"]


def _check_pair(x: Tensor, ref: Tensor, min_ndim: int = 2) -> None:
    if not isinstance(x, Tensor) or not isinstance(ref, Tensor):
        raise TypeError(f"x and ref must be tensors, got {type(x).__name__}, {type(ref).__name__}")
    if x.shape != ref.shape:
        raise ValueError(
            f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}"
        )
    if x.ndim < min_ndim:
        raise ValueError(
            f"expected a batch with at least {min_ndim} dims, got shape {tuple(x.shape)}"
        )


def _float(x: Tensor) -> Tensor:
    return (
        x
        if x.is_floating_point() and x.dtype != torch.float16 and x.dtype != torch.bfloat16
        else x.float()
    )


def mse(x: Tensor, ref: Tensor) -> Tensor:
    """Mean squared error per image: ``x``, ``ref`` of shape ``(B, ...)`` -> ``(B,)``."""
    _check_pair(x, ref)
    d = _float(x) - _float(ref)
    return d.pow(2).flatten(1).mean(1)


def psnr(x: Tensor, ref: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB, per image.

    Args:
        x: estimates ``(B, C, H, W)`` (any shape ``(B, ...)``).
        ref: references, same shape.
        data_range: ``max - min`` of the value range (1 for ``[0, 1]``, 255 for 8-bit).

    Returns:
        Tensor ``(B,)``; ``inf`` where ``x == ref``.
    """
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    err = mse(x, ref)
    return 10.0 * torch.log10(data_range**2 / err)


def _gaussian_window(sigma: float, truncate: float, dtype: torch.dtype, device) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(
    x: Tensor,
    ref: Tensor,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Structural similarity per image (Gaussian window, mean over valid positions and channels).

    Args:
        x: estimates ``(B, C, H, W)``.
        ref: references, same shape.
        data_range: ``max - min`` of the value range.
        sigma: std of the Gaussian window (1.5 gives the 11x11 window of Wang et al.).
        k1, k2: SSIM stability constants.

    Returns:
        Tensor ``(B,)``.

    Raises:
        ValueError: shapes differ, are not 4-D, or the image is smaller than the window.
    """
    _check_pair(x, ref, min_ndim=4)
    if x.ndim != 4:
        raise ValueError(f"ssim expects (B, C, H, W), got shape {tuple(x.shape)}")
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    x, ref = _float(x), _float(ref)
    b, c, h, w = x.shape
    g = _gaussian_window(sigma, 3.5, x.dtype, x.device)
    win = g.numel()
    if h < win or w < win:
        raise ValueError(f"images of size {h}x{w} are smaller than the {win}x{win} SSIM window")

    def blur(t: Tensor) -> Tensor:  # separable valid filtering, (B*C*5, 1, H, W)
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))

    stack = torch.stack([x, ref, x * x, ref * ref, x * ref], dim=2)  # (B, C, 5, H, W)
    mu = blur(stack.reshape(-1, 1, h, w)).reshape(b, c, 5, h - win + 1, w - win + 1)
    ux, uy, uxx, uyy, uxy = mu.unbind(2)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return (num / den).flatten(1).mean(1)
