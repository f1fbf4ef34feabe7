"""``make_physics``: build an operator by task name."""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import torch

from .base import Denoising, LinearOperator
from .blur import Deblurring, SuperResolution
from .compressed_sensing import CompressedSensing
from .inpainting import Inpainting, box_mask, random_mask
from .kernels import gaussian_kernel, motion_kernel

__all__ = ["TASKS", "canonical_task", "make_physics"]

TASKS: Tuple[str, ...] = (
    "denoising",
    "inpainting",
    "deblurring",
    "superresolution",
    "compressed_sensing",
)


def _chw(image_shape: Sequence[int]) -> Tuple[int, int, int]:
    shape = tuple(image_shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(
            f"image_shape must be (C, H, W), (H, W) or (B, C, H, W) positive ints, got {image_shape!r}"
        )
    return shape


def _generator(kw: dict) -> torch.Generator | None:
    gen = kw.pop("generator", None)
    seed = kw.pop("seed", None)
    if gen is None and seed is not None:
        gen = torch.Generator().manual_seed(int(seed))
    return gen


#: other spellings of the task names (after lower-casing and mapping "-" and " " to "_")
_ALIASES = {"super_resolution": "superresolution", "sr": "superresolution",
            "compressedsensing": "compressed_sensing", "cs": "compressed_sensing"}


def canonical_task(task: str) -> str:
    """The canonical name of a task: case-insensitive, ``-``, ``_`` or a space between words, and the
    aliases ``sr`` and ``cs`` (``"Super-Resolution"`` -> ``"superresolution"``).

    Raises:
        TypeError: ``task`` is not a string. ValueError: an unknown task (the message lists them).

    Example:
        >>> canonical_task("Super-Resolution"), canonical_task("cs")
        ('superresolution', 'compressed_sensing')
    """
    if not isinstance(task, str):
        raise TypeError(f"task must be a string, one of {', '.join(TASKS)}; got {task!r}")
    name = task.lower().replace("-", "_").replace(" ", "_")
    name = _ALIASES.get(name, name)
    if name not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks are: {', '.join(TASKS)}")
    return name


def make_physics(task: str, image_shape: Sequence[int], **kw: Any) -> LinearOperator:
    """Build the forward operator of a task for images of ``image_shape``.

    Args:
        task: one of :data:`TASKS` (case-insensitive, ``-`` or ``_`` or nothing between words).
        image_shape: ``(C, H, W)`` (also ``(H, W)`` or ``(B, C, H, W)``).
        **kw: task options:

            * ``"denoising"``: none.
            * ``"inpainting"``: ``mask`` (a tensor), else ``box_size`` (a centred hole, or a random
              position with ``generator``/``seed``), else a random mask with ``p_missing`` (default
              0.5) drawn from ``generator`` or ``seed``.
            * ``"deblurring"``: ``kernel`` (a tensor), else ``blur="gaussian"`` (``kernel_size=9``,
              ``std=2.0``) or ``blur="motion"`` (``kernel_size=9``, ``angle=0.0``); the default
              size shrinks to the largest odd size that fits a smaller image.
            * ``"superresolution"``: ``factor`` (default 2), ``kernel`` (default ``None``: pure
              decimation).
            * ``"compressed_sensing"``: ``m`` or ``ratio`` (default 0.25, ``m = round(ratio * n)``),
              ``generator``/``seed``, ``dtype``.

    Returns:
        A :class:`LinearOperator`.

    Raises:
        ValueError: for an unknown task (the message lists the valid ones) or a bad shape.
        TypeError: for an option the task does not take.
    """
    name = canonical_task(task)
    C, H, W = _chw(image_shape)
    kw = dict(kw)
    if name == "denoising":
        op: LinearOperator = Denoising(**kw)
    elif name == "inpainting":
        mask = kw.pop("mask", None)
        box = kw.pop("box_size", None)
        p = kw.pop("p_missing", 0.5)
        gen = _generator(kw)
        if mask is None:
            mask = (
                box_mask((H, W), box, generator=gen)
                if box is not None
                else random_mask((H, W), p, generator=gen)
            )
        op = Inpainting(mask, **kw)
    elif name == "deblurring":
        kernel = kw.pop("kernel", None)
        blur = kw.pop("blur", "gaussian")
        size = kw.pop("kernel_size", None)
        if size is None:  # 9, or the largest odd size that fits a smaller image
            size = min(9, H, W)
            size -= 1 - size % 2
        std = kw.pop("std", 2.0)
        angle = kw.pop("angle", 0.0)
        if kernel is None:
            if blur == "gaussian":
                kernel = gaussian_kernel(size, std)
            elif blur == "motion":
                kernel = motion_kernel(size, angle)
            else:
                raise ValueError(f"blur must be 'gaussian' or 'motion', got {blur!r}")
        op = Deblurring(kernel, img_size=(H, W), **kw)
    elif name == "superresolution":
        op = SuperResolution(kw.pop("factor", 2), img_size=(H, W), **kw)
    else:
        m = kw.pop("m", None)
        ratio = kw.pop("ratio", 0.25)
        if m is None:
            if isinstance(ratio, bool) or not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
                raise ValueError(f"ratio (measurements per pixel) must be in (0, 1], got {ratio!r}")
            m = max(1, round(ratio * C * H * W))
        gen = _generator(kw)
        op = CompressedSensing(m, (C, H, W), generator=gen, **kw)
    return op
