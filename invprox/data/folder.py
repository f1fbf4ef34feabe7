"""Image folders as torch data sets, and random patches from large images.

:class:`ImageFolder` reads every image file of a folder (sorted by path, so the order is
reproducible) and returns float tensors ``(C, size, size)`` in ``[0, 1]``. Decoding uses Pillow,
imported lazily. Resizing is done in torch (bicubic with antialiasing, within a few 1/255 of
Pillow's bicubic filter), so 8-bit and 16-bit images take the same path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "load_image",
    "list_images",
    "fit_square",
    "random_patches",
]

IMAGE_EXTENSIONS: Tuple[str, ...] = ("png", "jpg", "jpeg", "bmp", "tif", "tiff")
_RESIZE_MODES = ("center_crop", "resize")
# ITU-R 601-2 luma, the weights Pillow uses for RGB -> L.
_LUMA = (0.299, 0.587, 0.114)


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}")


def load_image(path: Union[str, os.PathLike], channels: int = 3) -> Tensor:
    """Decode one image file to a float tensor in ``[0, 1]``.

    Gray images are replicated to RGB when ``channels=3``; colour images are converted to gray by
    ITU-R 601-2 luminance when ``channels=1``. An alpha channel is dropped. 16-bit images are scaled
    by 1/65535, floating-point images are clipped to ``[0, 1]``.

    Args:
        path: the image file.
        channels: 1 (gray) or 3 (RGB).

    Returns:
        Tensor ``(channels, H, W)``, float32.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded as an image (message names the file).
    """
    import numpy as np
    from PIL import Image

    _check_channels(channels)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                arr = np.asarray(img, dtype=np.float32)
                arr = np.clip(arr, 0.0, 1.0) if mode == "F" else arr / 65535.0
                x = torch.from_numpy(np.ascontiguousarray(arr))[None]
            else:
                target = "L" if mode in ("1", "L", "LA") else "RGB"
                arr = np.asarray(img.convert(target), dtype=np.uint8)
                x = torch.from_numpy(arr.copy()).float().div_(255.0)
                x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        raise ValueError(f"cannot read image file {path}: {type(err).__name__}: {err}") from err
    if x.shape[0] == channels:
        return x.contiguous()
    if channels == 3:
        return x.expand(3, -1, -1).contiguous()
    w = torch.tensor(_LUMA, dtype=x.dtype).view(3, 1, 1)
    return (x * w).sum(0, keepdim=True)


def fit_square(x: Tensor, size: int | None, resize: str = "center_crop") -> Tensor:
    """Bring an image to ``size x size``.

    Args:
        x: image ``(C, H, W)`` or batch ``(B, C, H, W)``.
        size: output side, or ``None`` to return ``x`` unchanged.
        resize: ``"center_crop"`` crops the largest centred square, then resizes (no distortion);
            ``"resize"`` resizes the whole image (the aspect ratio changes).

    Returns:
        Tensor ``(..., C, size, size)`` clipped to ``[0, 1]`` if it was resized.
    """
    if resize not in _RESIZE_MODES:
        raise ValueError(f"resize must be one of {_RESIZE_MODES}, got {resize!r}")
    if size is None:
        return x
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    h, w = x.shape[-2:]
    if resize == "center_crop" and h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = x[..., top : top + s, left : left + s]
    if x.shape[-2:] == (size, size):
        return x
    batch = x if x.ndim == 4 else x[None]
    out = F.interpolate(
        batch, size=(size, size), mode="bicubic", align_corners=False, antialias=True
    )
    out = out.clamp_(0.0, 1.0)
    return out if x.ndim == 4 else out[0]


def list_images(
    root: Union[str, os.PathLike],
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    recursive: bool = False,
) -> List[Path]:
    """Sorted image files of a folder (case-insensitive extension match; hidden files skipped).

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is not a folder.
        ValueError: no file with one of ``extensions`` was found.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    candidates = root.rglob("*") if recursive else root.iterdir()
    files = sorted(
        p
        for p in candidates
        if p.suffix.lower() in exts and not p.name.startswith(".") and p.is_file()
    )
    if not files:
        where = f"{root} (and its subfolders)" if recursive else str(root)
        raise ValueError(f"no images in {where}; looked for extensions {sorted(exts)}")
    return files


class ImageFolder(Dataset):
    """Every image of a folder as a float tensor ``(channels, size, size)`` in ``[0, 1]``.

    Args:
        root: the folder.
        size: output side; ``None`` keeps each image's own size (then batch with ``batch_size=1``).
        channels: 1 (gray) or 3 (RGB); see :func:`load_image` for the conversions.
        recursive: also read subfolders.
        resize: ``"center_crop"`` (crop the centred square, then bicubic resize) or ``"resize"``.
        extensions: file extensions to read, without dot, case-insensitive.
        cache: keep decoded tensors in memory after their first load (4 bytes per value: 236 MB for
            the 4800 images of ``celeba64/train`` at 64x64 RGB; each DataLoader worker holds its own
            copy).
        transform: optional callable applied to each tensor after resizing (not cached).

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: no image in ``root``, or bad ``size`` / ``channels`` / ``resize``. An unreadable
            file raises ``ValueError`` naming it when it is loaded; :meth:`verify` checks all files
            at once.
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        size: int | None = 64,
        channels: int = 3,
        recursive: bool = False,
        resize: str = "center_crop",
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        cache: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        _check_channels(channels)
        if resize not in _RESIZE_MODES:
            raise ValueError(f"resize must be one of {_RESIZE_MODES}, got {resize!r}")
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ValueError(f"size must be a positive int or None, got {size!r}")
        self.root = Path(root)
        self.size = size
        self.channels = channels
        self.resize = resize
        self.extensions = tuple(extensions)
        self.paths: List[Path] = list_images(self.root, self.extensions, recursive)
        self.cache = cache
        self.transform = transform
        self._cache: Dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> Tensor:
        x = self._cache.get(index)
        if x is None:
            x = fit_square(load_image(self.paths[index], self.channels), self.size, self.resize)
            if self.cache:
                self._cache[index] = x
        return x

    def __getitem__(self, index: int) -> Tensor:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images in {self.root}")
        x = self._load(index)
        if self.cache:
            x = x.clone()  # callers may write in place; the cached copy must stay intact
        return self.transform(x) if self.transform is not None else x

    def verify(self, raise_on_error: bool = True) -> List[Tuple[Path, str]]:
        """Decode every file and report all unreadable ones at once.

        Returns:
            The bad files as ``(path, reason)`` pairs (empty when all are good).

        Raises:
            ValueError: some files are bad and ``raise_on_error`` is true; the message lists them
                all.
        """
        bad = []
        for p in self.paths:
            try:
                load_image(p, self.channels)
            except (ValueError, FileNotFoundError) as err:
                bad.append((p, str(err.__cause__ or err)))
        if bad and raise_on_error:
            lines = "\n".join(f"  {p}: {why}" for p, why in bad)
            raise ValueError(
                f"{len(bad)} of {len(self.paths)} images in {self.root} unreadable:\n{lines}"
            )
        return bad

    def load_all(self) -> Tensor:
        """All images stacked, ``(N, channels, size, size)``; needs a fixed ``size``."""
        if self.size is None:
            raise ValueError(f"load_all needs a fixed size; {self.root} was opened with size=None")
        return torch.stack([self[i] for i in range(len(self))])

    def __repr__(self) -> str:
        return (
            f"ImageFolder(root={str(self.root)!r}, n={len(self)}, size={self.size}, "
            f"channels={self.channels}, resize={self.resize!r}, cache={self.cache})"
        )


def _dihedral(x: Tensor, k: int) -> Tensor:
    """One of the 8 flips/rotations of a ``(C, H, W)`` square patch."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def random_patches(
    images: Union[Tensor, Sequence[Tensor]],
    patch: int,
    n: int,
    generator: torch.Generator | None = None,
    augment: bool = False,
) -> Tensor:
    """Random square patches from a set of (large) images, e.g. BSD68 / Train400 for denoising.

    The source image is drawn uniformly, then the position uniformly over all valid positions.

    Args:
        images: a batch ``(N, C, H, W)`` or a sequence of ``(C, H_i, W_i)`` tensors of different
            sizes.
        patch: patch side.
        n: number of patches.
        generator: a CPU ``torch.Generator`` for reproducible draws (default: the global RNG).
        augment: apply a random one of the 8 flips/rotations to each patch (as DnCNN does).

    Returns:
        Tensor ``(n, C, patch, patch)``.

    Raises:
        ValueError: empty input, mixed channel counts, or an image smaller than ``patch``.
    """
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        images = list(images)
    if len(images) == 0:
        raise ValueError("random_patches needs at least one image")
    if not isinstance(patch, int) or patch < 1 or not isinstance(n, int) or n < 0:
        raise ValueError(
            f"patch must be a positive int and n a non-negative int, got {patch!r}, {n!r}"
        )
    for i, im in enumerate(images):
        if im.ndim != 3:
            raise ValueError(f"image {i} must be (C, H, W), got shape {tuple(im.shape)}")
        if im.shape[0] != images[0].shape[0]:
            raise ValueError(
                f"image {i} has {im.shape[0]} channels, image 0 has {images[0].shape[0]}"
            )
        if im.shape[1] < patch or im.shape[2] < patch:
            raise ValueError(
                f"image {i} of size {tuple(im.shape[1:])} is smaller than patch {patch}"
            )
    idx = torch.randint(len(images), (n,), generator=generator)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    rot = torch.randint(8, (n,), generator=generator) if augment else None
    out = []
    for j in range(n):
        im = images[int(idx[j])]
        top = int(u[j, 0] * (im.shape[1] - patch + 1))
        left = int(u[j, 1] * (im.shape[2] - patch + 1))
        p = im[:, top : top + patch, left : left + patch]
        out.append(_dihedral(p, int(rot[j])) if rot is not None else p)
    if not out:
        return images[0].new_empty((0, images[0].shape[0], patch, patch))
    return torch.stack(out)
