"""The embedded default data: real photographs that ship inside the scikit-image wheel.

The files are read straight from the ``skimage/data`` folder of the installed package, so nothing is
ever downloaded (scikit-image fetches its larger images with pooch; those are not used). The
images, with the file each comes from, original size and mode:

=====================  ==========================  ==========  =====  ======
name                   file                        size (WxH)  mode   split
=====================  ==========================  ==========  =====  ======
astronaut              astronaut.png               512x512     RGB    train
chelsea (the cat)      chelsea.png                 451x300     RGB    train
coins                  coins.png                   384x303     gray   train
moon                   moon.png                    512x512     gray   train
page                   page.png                    384x191     gray   train
text                   text.png                    448x172     gray   train
brick                  brick.png                   512x512     gray   train
grass                  grass.png                   512x512     gray   train
gravel                 gravel.png                  512x512     gray   train
hubble_deep_field      hubble_deep_field.jpg       1000x872    RGB    train
immunohistochemistry   ihc.png                     512x512     RGB    train
retina                 retina.jpg                  1411x1411   RGB    train
motorcycle             motorcycle_left.png         741x500     RGB    train
cell                   cell.png                    550x660     gray   train
camera                 camera.png                  512x512     gray   val
coffee                 coffee.png                  600x400     RGB    val
rocket                 rocket.jpg                  640x427     RGB    val
=====================  ==========================  ==========  =====  ======

Synthetic or binary images of the package (colour wheel, logo, checkerboard, phantom, horse
silhouette, blobs), the motion-blurred clock, the right stereo view (a near copy of the left) and
the tiny LFW subset are left out. The split is by image: no validation patch comes from a training
image.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

from .folder import load_image

__all__ = [
    "EMBEDDED_IMAGES",
    "EMBEDDED_SPLITS",
    "skimage_data_dir",
    "embedded_names",
    "embedded_images",
    "EmbeddedPatches",
]

EMBEDDED_IMAGES: Dict[str, str] = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coins": "coins.png",
    "moon": "moon.png",
    "page": "page.png",
    "text": "text.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "retina": "retina.jpg",
    "motorcycle": "motorcycle_left.png",
    "cell": "cell.png",
    "camera": "camera.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
}
EMBEDDED_SPLITS: Dict[str, Tuple[str, ...]] = {
    "val": ("camera", "coffee", "rocket"),
    "train": tuple(k for k in EMBEDDED_IMAGES if k not in ("camera", "coffee", "rocket")),
}


def skimage_data_dir() -> Path:
    """The ``data`` folder of the installed scikit-image package (found without importing it).

    Raises:
        ModuleNotFoundError: scikit-image is not installed.
    """
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the embedded data set needs scikit-image (pip install scikit-image); "
            "or pass a folder of images instead"
        )
    return Path(spec.origin).parent / "data"


def embedded_names(split: str | None = None) -> Tuple[str, ...]:
    """Names of the embedded images of ``split`` ("train", "val"), or all of them for ``None``."""
    if split is None:
        return tuple(EMBEDDED_IMAGES)
    if split not in EMBEDDED_SPLITS:
        raise ValueError(f"split must be 'train', 'val' or None, got {split!r}")
    return EMBEDDED_SPLITS[split]


@functools.cache
def _load(name: str, channels: int) -> Tensor:
    path = skimage_data_dir() / EMBEDDED_IMAGES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"embedded image {name!r} not found at {path}; this scikit-image install lacks "
            "its bundled data files"
        )
    return load_image(path, channels)


def embedded_images(channels: int = 3, split: str | None = None) -> List[Tensor]:
    """The embedded images at full resolution.

    Args:
        channels: 1 (gray, by luminance) or 3 (RGB; gray images are replicated).
        split: "train", "val" or ``None`` for all, in the order of :data:`EMBEDDED_IMAGES`.

    Returns:
        A list of float tensors ``(channels, H_i, W_i)`` in ``[0, 1]`` (sizes differ).
    """
    return [_load(name, channels).clone() for name in embedded_names(split)]


def _rescale(x: Tensor, max_side: int | None, min_side: int) -> Tensor:
    """Downscale so the longer side is at most ``max_side``; the shorter stays >= ``min_side``."""
    h, w = x.shape[-2:]
    s = 1.0 if max_side is None else min(1.0, max_side / max(h, w))
    s = max(s, min_side / min(h, w))
    if s == 1.0:
        return x
    size = (max(min_side, round(h * s)), max(min_side, round(w * s)))
    y = F.interpolate(x[None], size=size, mode="bicubic", align_corners=False, antialias=True)
    return y[0].clamp_(0.0, 1.0)


class EmbeddedPatches(Dataset):
    """Random square crops of the embedded images; deterministic given ``seed``.

    Each image is first downscaled (antialiased bicubic) so that its longer side is at most
    ``max_side`` (default ``4 * size``), which makes faces and objects recognisable at small crop
    sizes; then ``n`` crops are drawn once, at construction: the image uniformly, the position
    uniformly, and for training a horizontal flip with probability 1/2. Item ``i`` is always the
    same crop.

    Args:
        size: crop side.
        channels: 1 or 3.
        n: number of crops (default 4096 for "train", 512 for "val").
        split: "train" or "val"; the two use disjoint source images (:data:`EMBEDDED_SPLITS`).
        seed: seed of the crop positions.
        max_side: longer side after downscaling; ``None`` means ``4 * size``; ``0`` keeps full
            resolution.
        flip: random horizontal flips (default: on for "train", off for "val").

    Raises:
        ValueError: bad ``size``, ``n``, ``split`` or ``channels``.
        ModuleNotFoundError: scikit-image is not installed.
    """

    def __init__(
        self,
        size: int = 32,
        channels: int = 3,
        n: int | None = None,
        split: str = "train",
        seed: int = 0,
        max_side: int | None = None,
        flip: bool | None = None,
    ) -> None:
        if split not in EMBEDDED_SPLITS:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        n = (4096 if split == "train" else 512) if n is None else n
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        max_side = 4 * size if max_side is None else (max_side or None)
        self.size, self.channels, self.n, self.split, self.seed = size, channels, n, split, seed
        self.names = embedded_names(split)
        self.images = [_rescale(_load(k, channels), max_side, size) for k in self.names]
        g = torch.Generator().manual_seed(2 * int(seed) + (split == "val"))
        self._image = torch.randint(len(self.images), (n,), generator=g)
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)
        do_flip = split == "train" if flip is None else flip
        self._flip = (torch.rand(n, generator=g) < 0.5) & do_flip
        self._pos = []
        for j in range(n):
            h, w = self.images[int(self._image[j])].shape[-2:]
            self._pos.append((int(u[j, 0] * (h - size + 1)), int(u[j, 1] * (w - size + 1))))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Tensor:
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} embedded patches")
        im = self.images[int(self._image[index])]
        top, left = self._pos[index]
        x = im[:, top : top + self.size, left : left + self.size]
        return x.flip(-1) if bool(self._flip[index]) else x.clone()

    def source(self, index: int) -> str:
        """Name of the embedded image crop ``index`` comes from."""
        return self.names[int(self._image[index])]

    def __repr__(self) -> str:
        return (
            f"EmbeddedPatches(size={self.size}, channels={self.channels}, n={self.n}, "
            f"split={self.split!r}, seed={self.seed}, images={len(self.names)})"
        )
