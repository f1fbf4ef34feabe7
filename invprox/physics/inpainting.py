"""Inpainting: a binary mask that keeps some pixels and zeroes the others, and mask factories."""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from torch import Tensor

from .base import LinearOperator, logdet_from_eigenvalues
from .linalg import MuLike, batch_view

__all__ = ["Inpainting", "box_mask", "random_mask"]

IntPair = Union[int, Tuple[int, int]]


def _check_shape(shape: Sequence[int]) -> Tuple[int, ...]:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if len(shape) < 2 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"mask shape must be positive ints ending in (H, W), got {shape!r}")
    return shape


def random_mask(
    shape: Sequence[int],
    p_missing: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Mask with each pixel missing (0) independently with probability ``p_missing``, else 1.

    Args:
        shape: mask shape, ``(H, W)``, ``(1, 1, H, W)``, ``(B, 1, H, W)`` or ``(B, C, H, W)``.
        p_missing: probability that a pixel is missing, in ``[0, 1)``.
        generator: optional :class:`torch.Generator` (on CPU) for a reproducible mask.
        dtype: dtype of the mask.

    Returns:
        Tensor of ``shape`` with values 0 and 1.

    Raises:
        ValueError: if ``p_missing`` is outside ``[0, 1)`` or the shape is bad.
    """
    shape = _check_shape(shape)
    if isinstance(p_missing, bool) or not isinstance(p_missing, (int, float)) or not (0 <= p_missing < 1):
        raise ValueError(f"p_missing must be a number in [0, 1), got {p_missing!r}")
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return (u >= p_missing).to(dtype)


def box_mask(
    shape: Sequence[int],
    box_size: IntPair,
    top_left: Tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Mask of ones with one rectangular hole of zeros (the missing region).

    Args:
        shape: mask shape, ``(H, W)`` or 4-D as in :func:`random_mask`; the same box in every slice.
        box_size: hole size ``s`` or ``(bh, bw)``, at most the image size.
        top_left: hole position ``(row, col)``; by default the hole is centred, or drawn uniformly
            at random if a ``generator`` is given.
        generator: optional :class:`torch.Generator` for a random position.
        dtype: dtype of the mask.

    Returns:
        Tensor of ``shape`` with values 0 and 1.

    Raises:
        ValueError: if the box does not fit in the image.
    """
    shape = _check_shape(shape)
    H, W = shape[-2:]
    bh, bw = (box_size, box_size) if isinstance(box_size, int) else tuple(box_size)
    if not (isinstance(bh, int) and isinstance(bw, int) and 1 <= bh <= H and 1 <= bw <= W):
        raise ValueError(f"box_size {box_size!r} must be positive and fit in the image ({H}x{W})")
    if top_left is None:
        if generator is None:
            top_left = ((H - bh) // 2, (W - bw) // 2)
        else:
            r = torch.randint(0, H - bh + 1, (1,), generator=generator).item()
            c = torch.randint(0, W - bw + 1, (1,), generator=generator).item()
            top_left = (int(r), int(c))
    r0, c0 = top_left
    if not (0 <= r0 <= H - bh and 0 <= c0 <= W - bw):
        raise ValueError(f"a {bh}x{bw} box at {top_left} does not fit in the image ({H}x{W})")
    mask = torch.ones(shape, dtype=dtype)
    mask[..., r0 : r0 + bh, c0 : c0 + bw] = 0
    return mask


class Inpainting(LinearOperator):
    """Pixel-wise mask, ``A x = m * x`` (the measurement has the shape of ``x``, zeros where missing).

    ``A^T A = diag(m)``, so ``||A||^2 = 1`` and the data-consistency inverse is pointwise.

    Args:
        mask: 0/1 tensor (or bool) of shape ``(H, W)``, ``(1, 1, H, W)``, ``(B, 1, H, W)`` or
            ``(B, C, H, W)`` (1 = observed). Stored as the buffer ``mask`` of shape ``(b, c, H, W)``.

    Raises:
        TypeError: if ``mask`` is not a tensor.
        ValueError: if it has another shape, values other than 0 and 1, or no observed pixel.
    """

    def __init__(self, mask: Tensor):
        super().__init__()
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dim() == 2:
            mask = mask[None, None]
        if mask.dim() != 4 or mask.numel() == 0:
            raise ValueError(
                "mask must have shape (H, W), (1, 1, H, W), (B, 1, H, W) or (B, C, H, W), "
                f"got {tuple(mask.shape)}"
            )
        if not mask.is_floating_point():
            mask = mask.float()
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask values must be 0 (missing) or 1 (observed)")
        if not bool(mask.any()):
            raise ValueError("mask observes no pixel (all zeros): nothing would be measured")
        self.register_buffer("mask", mask)

    def _mask_for(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Inpainting expects images of shape (B, C, H, W), got {shape}")
        m = self.mask
        ok = m.shape[-2:] == x.shape[-2:] and m.shape[0] in (1, x.shape[0]) and m.shape[1] in (1, x.shape[1])
        if not ok:
            raise ValueError(
                f"mask of shape {tuple(m.shape)} does not match images of shape {tuple(x.shape)}"
            )
        return m.to(dtype=x.dtype, device=x.device)

    def A(self, x: Tensor) -> Tensor:
        return self._mask_for(x) * x

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self._mask_for(y) * y

    def _norm_sq_closed(self, shape: Tuple[int, ...] | None) -> float | None:
        return 1.0

    def dc_solve(self, b: Tensor, mu: MuLike) -> Tensor:
        return b / (1 - batch_view(mu, b) * self._mask_for(b))

    def dc_logdet(self, x: Tensor, mu: MuLike) -> Tensor:
        # eigenvalue 1 on observed entries, 0 elsewhere: count * log|1 - mu| per sample
        count = self._mask_for(x).expand(x.shape).reshape(x.shape[0], -1).sum(1)
        ld = logdet_from_eigenvalues(x.new_ones(1), x, mu)
        return count * ld

    def extra_repr(self) -> str:
        return f"mask={tuple(self.mask.shape)}, observed={float(self.mask.mean()):.3f}"
