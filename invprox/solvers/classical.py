"""Classical (untrained) reference reconstructions to put the learned solvers in context.

* :func:`noisy_input`: the back-projection ``A^T y`` (``y`` itself for denoising).
* :func:`bm3d_denoise`: BM3D (Dabov et al. 2007) through the optional ``bm3d`` package
  (``pip install bm3d``); raises :class:`ImportError` when it is not installed.
* :func:`tv_reconstruction`: proximal gradient on ``||A x - y||^2 / 2 + weight * TV(x)``, the TV prox by
  scikit-image's Chambolle solver; works for any operator.
* :func:`classical_reference`: the reference of a task, with the name of the method used: BM3D for
  denoising (non-local means when ``bm3d`` is missing), biharmonic inpainting (plus TV denoising when
  noisy) for inpainting, TV reconstruction for the other tasks.

All functions take and return torch tensors ``(B, C, H, W)`` (the result on ``y``'s dtype and device);
the work runs on the CPU in numpy, image by image.
"""

from __future__ import annotations

from typing import Any, Callable, Tuple

import numpy as np
import torch
from torch import Tensor

from ..physics import Inpainting, operator_norm_sq

__all__ = ["bm3d_available", "bm3d_denoise", "classical_reference", "noisy_input", "tv_reconstruction"]

_BM3D_MIN = 16  # the bm3d 4.0.3 binary crashes (segfault) on 8x8 images: pad small images to this size


def noisy_input(y: Tensor, physics: Any) -> Tensor:
    """The back-projection ``A^T y`` (for denoising, ``y`` itself), shape ``(B, C, H, W)``."""
    return physics.A_adjoint(y)


def _per_image(x: Tensor, fn: Callable[[np.ndarray], np.ndarray], multichannel: bool = False) -> Tensor:
    """Apply ``fn`` to every image (``(H, W, C)`` if ``multichannel``, else every ``(H, W)`` channel)."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {getattr(x, 'shape', type(x))}")
    arr = x.detach().cpu().double().numpy()
    out = np.empty_like(arr)
    for b in range(arr.shape[0]):
        if multichannel:
            out[b] = np.moveaxis(fn(np.moveaxis(arr[b], 0, -1)), -1, 0)
        else:
            for c in range(arr.shape[1]):
                out[b, c] = fn(arr[b, c])
    return torch.from_numpy(out).to(dtype=x.dtype, device=x.device)


def bm3d_available() -> bool:
    """Whether the ``bm3d`` package can be imported."""
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


def bm3d_denoise(y: Tensor, sigma: float) -> Tensor:
    """BM3D denoising of ``y`` ``(B, C, H, W)`` with noise std ``sigma`` (image units).

    Three-channel images use ``bm3d_rgb`` (colour BM3D in an opponent colour space); other channel
    counts are denoised channel by channel. Images smaller than 16 pixels on a side are padded
    (symmetric) and cropped back (the ``bm3d`` binary crashes on 8x8 inputs).

    Raises:
        ImportError: when the ``bm3d`` package is not installed (``pip install bm3d``).
    """
    try:
        import bm3d
    except ImportError as err:
        raise ImportError(
            "bm3d_denoise needs the optional 'bm3d' package: pip install bm3d "
            "(classical_reference falls back to non-local means without it)"
        ) from err
    sigma = float(sigma)
    if sigma <= 0:
        return y.clone()

    def run(img: np.ndarray) -> np.ndarray:
        H, W = img.shape[:2]
        ph, pw = max(0, _BM3D_MIN - H), max(0, _BM3D_MIN - W)
        pad = ((0, ph), (0, pw)) + ((0, 0),) * (img.ndim - 2)
        big = np.pad(img, pad, mode="symmetric") if ph or pw else img
        out = bm3d.bm3d_rgb(big, sigma) if img.ndim == 3 else bm3d.bm3d(big, sigma)
        return np.asarray(out, dtype=np.float64).reshape(big.shape)[:H, :W]

    return _per_image(y, run, multichannel=y.dim() == 4 and y.shape[1] == 3)


def _nl_means(y: Tensor, sigma: float) -> Tensor:
    from skimage.restoration import denoise_nl_means

    if sigma <= 0:
        return y.clone()
    kw = dict(h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)
    return _per_image(y, lambda img: denoise_nl_means(img, **kw))


def _tv_denoise(x: Tensor, weight: float) -> Tensor:
    from skimage.restoration import denoise_tv_chambolle

    if weight <= 0:
        return x
    return _per_image(x, lambda img: denoise_tv_chambolle(img, weight=weight))


def tv_reconstruction(
    y: Tensor, physics: Any, weight: float = 0.05, steps: int = 30, x0: Tensor | None = None
) -> Tensor:
    """Proximal gradient (ISTA) on ``||A x - y||^2 / 2 + weight * TV(x)``.

    ``x <- TV_prox(x - mu A^T (A x - y), mu * weight)`` with ``mu = 1 / ||A||^2``, started at ``x0``
    (default ``A^T y``); the prox is scikit-image's ``denoise_tv_chambolle`` (isotropic TV).

    Args:
        y: measurements, shape of ``physics.A(x)``.
        physics: the operator (``A``, ``A_adjoint``).
        weight: TV weight (about the noise level works for images in ``[0, 1]``).
        steps: proximal-gradient iterations.
        x0: start image ``(B, C, H, W)``.

    Returns:
        ``(B, C, H, W)`` on ``y``'s dtype and device (no graph).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    with torch.no_grad():
        x = physics.A_adjoint(y) if x0 is None else x0.detach()
        mu = 1.0 / operator_norm_sq(physics, tuple(x.shape), device=x.device, dtype=x.dtype)
        for _ in range(steps):
            x = _tv_denoise(x - mu * physics.A_adjoint(physics.A(x) - y), mu * weight)
    return x


def _inpaint(y: Tensor, physics: Inpainting, sigma: float) -> Tensor:
    from skimage.restoration import inpaint_biharmonic

    mask = physics.mask.to(dtype=y.dtype, device=y.device).expand(y.shape).detach().cpu().numpy()
    arr = y.detach().cpu().double().numpy()
    out = np.empty_like(arr)
    for b in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            missing = mask[b, c] == 0
            out[b, c] = inpaint_biharmonic(arr[b, c], missing) if missing.any() else arr[b, c]
    x = torch.from_numpy(out).to(dtype=y.dtype, device=y.device)
    return _tv_denoise(x, sigma)


def classical_reference(y: Tensor, physics: Any, task: str, sigma: float = 0.0) -> Tuple[Tensor, str]:
    """A classical reconstruction for ``task`` and the name of the method used.

    * ``"denoising"``: ``"bm3d"``; ``"nl_means"`` (scikit-image) when ``bm3d`` is not installed.
    * ``"inpainting"``: ``"biharmonic"`` (scikit-image ``inpaint_biharmonic`` on the missing pixels),
      ``"biharmonic+tv"`` when ``sigma > 0`` (then TV denoising with weight ``sigma``); ``"tv"`` for an
      operator that is not an :class:`~invprox.physics.Inpainting`.
    * ``"deblurring"``, ``"superresolution"``, ``"compressed_sensing"``: ``"tv"``
      (:func:`tv_reconstruction` with weight ``max(sigma, 0.01)``).

    Args:
        y: measurements, shape of ``physics.A(x)``.
        physics: the operator.
        task: a task name of :data:`invprox.physics.TASKS`.
        sigma: noise std of ``y`` (image units).

    Returns:
        ``(x, method_name)``, ``x`` of shape ``(B, C, H, W)`` on ``y``'s dtype and device.

    Raises:
        ValueError: for an unknown task or a negative ``sigma``.
    """
    from ..physics import TASKS

    name = str(task).lower().replace("-", "_")
    name = {"super_resolution": "superresolution"}.get(name, name)
    if name not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks are: {', '.join(TASKS)}")
    if not (isinstance(sigma, (int, float)) and sigma >= 0):
        raise ValueError(f"sigma must be a non-negative number, got {sigma!r}")
    sigma = float(sigma)
    if name == "denoising":
        xb = noisy_input(y, physics)
        if bm3d_available():
            return bm3d_denoise(xb, sigma), "bm3d"
        return _nl_means(xb, sigma), "nl_means"
    if name == "inpainting" and isinstance(physics, Inpainting):
        return _inpaint(y, physics, sigma), "biharmonic+tv" if sigma > 0 else "biharmonic"
    return tv_reconstruction(y, physics, weight=max(sigma, 0.01)), "tv"
