"""The latent proximal steps of the flow prox (:class:`~invprox.solvers.FlowProxSolver`): Gaussian shrinkage
``z / (1 + lambda)`` (invertible) and soft thresholding (Laplace), with a learned ``lambda >= 0``, one
scalar or one per multi-scale level of the latent."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..core.block import InvertibleModule

__all__ = ["LatentShrinkage", "SoftThreshold"]


_LAM_MIN = 1e-4  # the smallest lambda a calibration sets ("no shrinkage")


def _inv_softplus(v: float) -> float:
    """``softplus^-1(v)``, stable for large ``v``."""
    return v + math.log(-math.expm1(-v))


def _check_lam(lam_init: float) -> float:
    if isinstance(lam_init, bool) or not isinstance(lam_init, (int, float)):
        raise TypeError(f"lam_init must be a number, got {type(lam_init).__name__}")
    if not (math.isfinite(lam_init) and lam_init > 0):
        raise ValueError(f"lam_init must be positive and finite, got {lam_init!r}")
    return float(lam_init)


class _LearnedLambda(nn.Module):
    """A learned shrinkage ``lambda = softplus(raw) >= 0`` (whatever the optimiser does).

    ``levels``: optional long tensor ``(C, H, W)`` giving each latent entry a group (the multi-scale level
    of :meth:`invprox.flows.Glow.latent_levels`); there is then one ``lambda`` per group, else one scalar.
    """

    uses_cond = False
    # the engine's plan (invprox.core.block): no randomness, reads only lambda; ``levels`` is constant
    draws_random = False
    self_contained = True
    static_buffers = True

    def __init__(self, lam_init: float = 0.1, levels: Optional[Tensor] = None):
        super().__init__()
        raw = torch.tensor(_inv_softplus(_check_lam(lam_init)))
        if levels is not None:
            if not isinstance(levels, Tensor) or levels.dtype != torch.long or levels.numel() == 0:
                raise TypeError("levels must be a non-empty long tensor of latent groups")
            if int(levels.min()) < 0:
                raise ValueError("levels must be non-negative group indices")
            raw = raw.repeat(int(levels.max()) + 1)
            self.register_buffer("levels", levels.clone(), persistent=False)
        else:
            self.levels = None
        self.raw_lam = nn.Parameter(raw)

    @property
    def lam(self) -> Tensor:
        """``lambda``: a scalar, or one value per level."""
        return F.softplus(self.raw_lam)

    @torch.no_grad()
    def set_lam(self, lam: Union[float, Sequence[float]]) -> None:
        """Set ``lambda`` (a number, or one per level), e.g. from a calibration."""
        vals = torch.as_tensor(lam, dtype=torch.float64).reshape(-1).tolist()
        if len(vals) not in (1, self.raw_lam.numel()):
            raise ValueError(f"expected 1 or {self.raw_lam.numel()} values of lambda, got {len(vals)}")
        raw = [_inv_softplus(_check_lam(max(float(v), _LAM_MIN))) for v in vals]
        src = torch.tensor(raw, dtype=self.raw_lam.dtype, device=self.raw_lam.device)
        self.raw_lam.copy_(src.reshape(self.raw_lam.shape) if src.numel() == self.raw_lam.numel() else src[0])

    def _per_entry(self, v: Tensor, like: Tensor) -> Tensor:
        v = v.to(dtype=like.dtype, device=like.device)
        return v if self.levels is None else v[self.levels.to(like.device)]

    def extra_repr(self) -> str:
        lam = self.lam.detach().reshape(-1).tolist()
        per = " (per group of latent entries)" if self.levels is not None else ""
        return "lam=" + ", ".join(f"{v:.4g}" for v in lam) + per


class LatentShrinkage(_LearnedLambda, InvertibleModule):
    """``z -> z / (1 + lambda)``: the proximal step of a standard Gaussian latent prior.

    With ``levels``, ``z_l / (1 + lambda_l)`` per multi-scale level: the exact prox of a Gaussian prior
    whose levels carry their own weights. Invertible for every ``lambda >= 0``.

    With ``cond_channels``, ``lambda`` is a map over the latent's entries read from a conditioning image
    ``c`` (the last cond tensor, of the latent's height and width): ``lambda = softplus(raw_l + n(c))``,
    ``n`` a small convolutional network whose last layer starts at zero, so the map starts at the levels'
    values. For each ``c`` this is still the exact prox of a Gaussian prior (one whose variances depend on
    the measurement), and invertible.

    Args:
        lam_init: initial ``lambda`` (> 0), every level alike.
        levels: optional ``(C, H, W)`` long tensor of latent levels (see :class:`_LearnedLambda`).
        cond_channels: channels of the conditioning image (0: ``lambda`` does not depend on it); needs
            ``levels``.
        hidden: hidden channels of ``n``.
    """

    def __init__(self, lam_init: float = 0.1, levels: Optional[Tensor] = None, cond_channels: int = 0,
                 hidden: int = 32):
        super().__init__(lam_init, levels)
        self.lam_net: Optional[nn.Sequential] = None
        if cond_channels:
            if levels is None:
                raise ValueError("a lambda map read from a conditioning image needs levels (a latent with "
                                 "the image's layout)")
            # the last layer is made first, as it always was: the others draw the same seeded weights
            last = nn.Conv2d(hidden, levels.shape[0], 3, padding=1)
            self.lam_net = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU(),
                                         nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(), last)
            self.reset_map()
            self.uses_cond = True

    @torch.no_grad()
    def reset_map(self) -> None:
        """Zero the last layer of the map read from the conditioning image, so that ``lambda`` is the
        levels' values whatever the image (as at construction); nothing without ``cond_channels``."""
        if self.lam_net is not None:
            nn.init.zeros_(self.lam_net[-1].weight)
            nn.init.zeros_(self.lam_net[-1].bias)

    def _factor(self, z: Tensor, cond: Sequence[Tensor] = ()) -> Tensor:
        if self.lam_net is None:
            return self._per_entry(1.0 / (1.0 + self.lam), z)
        if not cond or cond[-1].shape[-2:] != z.shape[-2:]:
            raise ValueError(f"this shrinkage reads lambda from a conditioning image of height and width "
                             f"{tuple(z.shape[-2:])} (its last cond tensor), got "
                             f"{tuple(cond[-1].shape) if cond else 'none'}")
        raw = self._per_entry(self.raw_lam, z) + self.lam_net(cond[-1].to(z.dtype))
        return 1.0 / (1.0 + F.softplus(raw))

    def forward(self, z: Tensor, *cond: Tensor) -> Tensor:
        return z * self._factor(z, cond)

    def inverse(self, y: Tensor, *cond: Tensor) -> Tensor:
        return y / self._factor(y, cond)

    def forward_and_logdet(self, z: Tensor, *cond: Tensor):
        c = self._factor(z, cond)
        if c.dim() == z.dim():  # one map per image
            return z * c, torch.log(c).flatten(1).sum(1)
        logc = torch.log(c).expand(z.shape[1:]).sum() if c.dim() else torch.log(c) * z[0].numel()
        return z * c, logc.expand(z.shape[0])


class SoftThreshold(_LearnedLambda):
    """``z -> sign(z) max(|z| - lambda, 0)``: the proximal step of a Laplace latent prior.

    Not invertible (``invertible = False``): the engine keeps its input.

    Args:
        lam_init: initial ``lambda`` (> 0).
    """

    invertible = False

    def forward(self, z: Tensor) -> Tensor:
        return torch.sign(z) * F.relu(z.abs() - self._per_entry(self.lam, z))
