"""Labelled image grids (one labelled row per method) written with matplotlib, imported lazily."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["save_grid"]


def _row_strip(x: Tensor, nrow: int, pad: int, rgb: bool) -> np.ndarray:
    x = x.detach().float().cpu().clamp(0, 1)[:nrow]
    if rgb and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n, c, h, w = x.shape
    strip = torch.ones(c, h, nrow * (w + pad) - pad)
    for i in range(n):
        strip[:, :, i * (w + pad) : i * (w + pad) + w] = x[i]
    return strip.permute(1, 2, 0).numpy()


def save_grid(
    rows: Dict[str, Tensor],
    path: Union[str, os.PathLike],
    nrow: int = 8,
    title: Optional[str] = None,
    pad: int = 2,
    dpi: int = 100,
) -> Path:
    """Write images as a grid with one labelled row per entry of ``rows`` (e.g. input / methods / truth).

    Args:
        rows: label -> images ``(N, C, H, W)`` in ``[0, 1]`` (clamped), ``C`` = 1 or 3; all rows of the same
            ``H, W``. Each row shows its first ``nrow`` images; gray rows are shown as RGB when another row
            is colour.
        path: the PNG file (its folder is created).
        nrow: images per row.
        title: optional figure title.
        pad: white pixels between images.
        dpi: resolution; each image pixel is drawn as at least one screen pixel.

    Returns:
        The path written.

    Raises:
        ValueError: no rows, or rows that are not ``(N, 1|3, H, W)`` of one size.
    """
    if not rows:
        raise ValueError("save_grid needs at least one row")
    sizes = set()
    for name, x in rows.items():
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 1:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"row {name!r} must be images (N, 1 or 3, H, W), got {shape}")
        sizes.add(tuple(x.shape[-2:]))
    if len(sizes) != 1:
        raise ValueError(f"all rows must have the same image size, got {sorted(sizes)}")
    nrow = max(1, min(int(nrow), max(x.shape[0] for x in rows.values())))
    rgb = any(x.shape[1] == 3 for x in rows.values())
    strips = [_row_strip(x, nrow, pad, rgb) for x in rows.values()]

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = strips[0].shape[:2]
    scale = max(1.0, 96.0 / h)  # small images are drawn larger
    label_in = 1.4
    fig_w = label_in + scale * w / dpi + 0.1
    row_in = scale * h / dpi + 0.08
    fig_h = row_in * len(strips) + (0.35 if title else 0.1)
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    top = 1 - (0.35 if title else 0.05) / fig_h
    for i, (name, strip) in enumerate(zip(rows, strips)):
        bottom = top - (i + 1) * row_in / fig_h
        ax = fig.add_axes((label_in / fig_w, bottom + 0.04 / fig_h, scale * w / dpi / fig_w,
                           (row_in - 0.08) / fig_h))
        img = strip[..., 0] if strip.shape[-1] == 1 else strip
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest",
                  aspect="auto")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_ylabel(str(name), rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.05 / fig_h, va="top")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
