"""Additive Gaussian noise and (noisy, clean) pairs for denoising.

Noise is added in floating point and never clipped or rounded, as in the published BSD68 / CelebA
anchors (``shared/data/MANIFEST.md``).
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..physics.base import gaussian_noise

__all__ = ["add_gaussian_noise", "NoisyPairs"]


#: ``x + sigma * n``, ``n ~ N(0, I)``, not clipped; ``sigma`` a number or one per image, ``(B,)``. The one
#: implementation is the operators' (:func:`invprox.physics.base.gaussian_noise`).
add_gaussian_noise = gaussian_noise


def _index_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for item ``index`` (independent streams per item)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(
        1, np.uint64
    )
    return int(state[0]) >> 1


class NoisyPairs(Dataset):
    """Wrap a data set of clean images into ``(noisy, clean)`` pairs.

    Args:
        dataset: items are tensors ``(C, H, W)`` (or tuples whose first element is one).
        sigma: noise std, or a range ``(lo, hi)`` from which each item draws its std uniformly
            (blind denoising).
        seed: seed of the per-item noise when ``fixed``.
        fixed: ``True`` (validation): item ``i`` always gets the same noise, derived from ``(seed,
            i)``, whatever the order, worker or epoch. ``False`` (training): fresh noise on every
            access from torch's global RNG (reproducible under ``torch.manual_seed``; DataLoader
            workers are seeded from it each epoch).
        return_sigma: also return the std used, as a 0-d tensor: ``(noisy, clean, sigma)``.

    Raises:
        ValueError: negative ``sigma`` or a range with ``lo > hi``.
    """

    def __init__(
        self,
        dataset: Dataset,
        sigma: Union[float, Sequence[float]],
        seed: int = 0,
        fixed: bool = True,
        return_sigma: bool = False,
    ) -> None:
        if isinstance(sigma, (tuple, list)):
            if len(sigma) != 2 or not 0 <= sigma[0] <= sigma[1]:
                raise ValueError(f"sigma range must be (lo, hi) with 0 <= lo <= hi, got {sigma!r}")
            self.sigma: Tuple[float, float] = (float(sigma[0]), float(sigma[1]))
        else:
            if float(sigma) < 0:
                raise ValueError(f"sigma must be non-negative, got {sigma}")
            self.sigma = (float(sigma), float(sigma))
        self.dataset = dataset
        self.seed = seed
        self.fixed = fixed
        self.return_sigma = return_sigma

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        clean = self.dataset[index]
        if isinstance(clean, (tuple, list)):
            clean = clean[0]
        if not isinstance(clean, Tensor):
            raise TypeError(
                f"item {index} of the wrapped data set is {type(clean).__name__}, not a tensor"
            )
        g = None
        if self.fixed:
            g = torch.Generator().manual_seed(_index_seed(self.seed, index % len(self)))
        lo, hi = self.sigma
        s = (
            lo
            if lo == hi
            else lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))
        )
        noise = torch.randn(clean.shape, generator=g, dtype=clean.dtype)
        noisy = clean + s * noise.to(clean.device)
        if self.return_sigma:
            return noisy, clean, torch.tensor(s, dtype=clean.dtype)
        return noisy, clean

    def __repr__(self) -> str:
        s = self.sigma[0] if self.sigma[0] == self.sigma[1] else self.sigma
        return f"NoisyPairs(n={len(self)}, sigma={s}, seed={self.seed}, fixed={self.fixed})"
