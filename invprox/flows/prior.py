"""Latent priors of a flow: log-density, sampling and the proximal step.

Both priors are i.i.d. per dimension with zero mean and unit variance:

* ``"gaussian"``: ``p(z) = N(0, 1)``; ``prox_{lam * (-log p)}(z) = z / (1 + lam)``.
* ``"laplace"``: standard Laplace of unit variance (scale ``b = 1 / sqrt(2)``),
  ``-log p(z) = sqrt(2) |z| + log(sqrt(2))``; the prox is soft thresholding at ``lam * sqrt(2)``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["PRIORS", "prior_log_prob", "prior_sample", "prior_prox"]

PRIORS = ("gaussian", "laplace")
_LOG_2PI = math.log(2 * math.pi)
_SQRT2 = math.sqrt(2.0)


def _check(prior: str) -> None:
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")


def prior_log_prob(z: Tensor, prior: str = "gaussian") -> Tensor:
    """``log p(z)`` summed over all but the batch dimension, shape ``(B,)``."""
    _check(prior)
    if prior == "gaussian":
        lp = -0.5 * (z * z + _LOG_2PI)
    else:
        lp = -_SQRT2 * z.abs() - 0.5 * math.log(2.0)
    return lp.flatten(1).sum(1)


def prior_sample(
    shape: Sequence[int],
    prior: str = "gaussian",
    temperature: float = 1.0,
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
    device=None,
) -> Tensor:
    """``temperature * z`` with ``z`` drawn from the prior (temperature scales the standard deviation)."""
    _check(prior)
    kw = dict(generator=generator, dtype=dtype, device=device)
    if prior == "gaussian":
        z = torch.randn(*shape, **kw)
    else:  # difference of two Exp(1) is Laplace(0, 1); scale to unit variance
        e1 = -torch.log1p(-torch.rand(*shape, **kw))
        e2 = -torch.log1p(-torch.rand(*shape, **kw))
        z = (e1 - e2) / _SQRT2
    return z * temperature


def prior_prox(z: Tensor, lam, prior: str = "gaussian") -> Tensor:
    """Proximal step of ``lam * (-log p)``: ``argmin_u 0.5 |u - z|^2 - lam log p(u)``.

    Gaussian: ``z / (1 + lam)``. Laplace: ``sign(z) * max(|z| - sqrt(2) lam, 0)``. ``lam`` may be a
    float or a tensor broadcastable to ``z`` (a learned parameter).
    """
    _check(prior)
    if prior == "gaussian":
        return z / (1 + lam)
    return torch.sign(z) * torch.relu(z.abs() - _SQRT2 * lam)
