"""Latent-space MAP with a pre-trained flow (Asim et al. 2020; Helminger et al. 2021).

With a flow ``f`` (flow space ``x = x01 - 0.5`` to latent ``z``) and ``g = f^-1``, solve

    min_z  ||y - A(g(z) + 0.5)||^2 + gamma ||z||^2

by Adam or L-BFGS and return ``g(z) + 0.5`` in image space. For Gaussian noise of std ``sigma`` and a
standard normal latent, ``gamma = sigma^2`` is the MAP estimate (``1/(2 sigma^2)`` times the objective).
The flow's weights are frozen: only ``z`` is optimised and no gradient reaches the flow's parameters
(their ``requires_grad`` is switched off during a call and restored after). ``g`` runs through the
engine (:meth:`Glow.inverse`), so the memory of a deep flow stays one block deep.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, List, Optional

import torch
from torch import Tensor, nn

__all__ = ["LatentMAP"]


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    params = [p for p in module.parameters() if p.requires_grad]
    was_training = module.training
    for p in params:
        p.requires_grad_(False)
    module.eval()  # no data-dependent initialisation, no statistics updates
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        module.train(was_training)


class LatentMAP:
    """Latent-space MAP: ``argmin_z ||y - A(g(z) + 0.5)||^2 + gamma ||z||^2``, returns ``g(z*) + 0.5``.

    Args:
        flow: a (pre-trained) :class:`invprox.flows.Glow` (``forward``: flow space to latent,
            ``inverse``: latent to flow space).
        physics: the default forward operator (``A``, ``A_adjoint``); a call may pass another, for that
            call only.
        gamma: weight of ``||z||^2`` (``sigma^2`` for the Gaussian MAP; default ``0.2**2``, the seed
            paper's training noise).
        steps: Adam iterations, or L-BFGS iterations (``max_iter`` of one ``LBFGS.step``).
        lr: learning rate (Adam), step length (L-BFGS, with a strong-Wolfe line search).
        init: ``"zero"`` (``z = 0``, the mode) or ``"backprojection"`` (``z = f(clip(A^T y, 0, 1) - 0.5)``).
        optimizer: ``"adam"`` or ``"lbfgs"``.
        sigma: the noise std of ``y``. When given (Adam only), each image stops by Morozov's discrepancy
            principle: its latent is frozen at the first iteration where ``||y - A x||^2 <= tau m sigma^2``
            (``m`` entries per measurement), the point past which the fit explains the noise rather than
            the image. Without it, every image runs all ``steps`` (which overfits the noise at large
            ``steps``: on unseen faces at sigma 0.20, 22.7 dB at 30 steps, 18.8 dB at 200).
        tau: the discrepancy principle's safety factor (about 1).

    The objective is summed over the batch. With Adam (element-wise) each image is solved
    independently; with L-BFGS the line search is shared by the batch.

    Attributes:
        history: the batch-mean objective at every iteration of the last call (``steps + 1`` values
            with Adam: the start, then after each step; L-BFGS: one per objective evaluation).

    Shapes:
        ``y``: shape of ``physics.A(x)``; output ``(B, C, H, W)`` in ``[0, 1]`` space (not clamped).
    """

    def __init__(
        self,
        flow: nn.Module,
        physics: Any,
        gamma: float = 0.04,
        steps: int = 200,
        lr: float = 0.05,
        init: str = "zero",
        optimizer: str = "adam",
        sigma: Optional[float] = None,
        tau: float = 1.0,
    ):
        if not (hasattr(flow, "inverse") and callable(flow)):
            raise TypeError(f"flow must be an invprox.flows.Glow, got {type(flow).__name__}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
            raise ValueError(f"gamma must be a non-negative number, got {gamma!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if init not in ("zero", "backprojection"):
            raise ValueError(f"init must be 'zero' or 'backprojection', got {init!r}")
        if optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
        self.flow, self.physics = flow, physics
        self.gamma, self.steps, self.lr = float(gamma), steps, float(lr)
        if sigma is not None and not (isinstance(sigma, (int, float)) and sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive number or None, got {sigma!r}")
        if not (isinstance(tau, (int, float)) and tau > 0 and math.isfinite(tau)):
            raise ValueError(f"tau must be a positive number, got {tau!r}")
        self.init, self.optimizer = init, optimizer
        self.sigma, self.tau = sigma, float(tau)
        self.stopped_at: Optional[Tensor] = None
        self.history: List[float] = []

    def objective(self, z: Tensor, y: Tensor, physics: Any = None) -> Tensor:
        """Per-image objective ``||y - A(g(z) + 0.5)||^2 + gamma ||z||^2``, shape ``(B,)``."""
        x = self.flow.inverse(z) + 0.5
        r = ((self.physics if physics is None else physics).A(x) - y).reshape(y.shape[0], -1)
        return (r**2).sum(1) + self.gamma * (z.reshape(z.shape[0], -1) ** 2).sum(1)

    def initial_latent(self, y: Tensor, physics: Any = None) -> Tensor:
        """The start ``z_0`` (see ``init``), shape ``(B, C, H, W)``, no graph."""
        with torch.no_grad():
            xb = (self.physics if physics is None else physics).A_adjoint(y)
            if self.init == "zero":
                return torch.zeros_like(xb)
            return self.flow(xb.clamp(0.0, 1.0) - 0.5)

    def __call__(self, y: Tensor, physics: Any = None, z0: Optional[Tensor] = None) -> Tensor:
        """Solve for every image of the batch ``y``; returns ``g(z*) + 0.5`` (no graph).

        Args:
            y: measurements, shape of ``physics.A(x)``.
            physics: operator for this call (default :attr:`physics`, which it does not change).
            z0: optional start latent (overrides ``init``).
        """
        op = self.physics if physics is None else physics
        if not isinstance(y, Tensor) or y.dim() < 2:
            raise ValueError(f"y must be a batched measurement tensor, got {type(y).__name__}")
        y = y.detach()
        self.history = []
        with _frozen(self.flow), torch.enable_grad():
            start = self.initial_latent(y, op) if z0 is None else z0.detach()
            z = start.clone().requires_grad_(True)

            def closure() -> Tensor:
                loss = self.objective(z, y, op).sum()
                (z.grad,) = torch.autograd.grad(loss, z)
                self.history.append(float(loss.detach()) / y.shape[0])
                return loss.detach()

            if self.optimizer == "adam":
                opt = torch.optim.Adam([z], lr=self.lr)
                stop = _Discrepancy(self, y, op) if self.sigma is not None else None
                for it in range(self.steps):
                    if stop is not None and stop.update(z, it):
                        break
                    opt.step(closure)
                with torch.no_grad():
                    if stop is not None:
                        stop.update(z, self.steps)
                        z = stop.final(z)
                    self.history.append(float(self.objective(z, y, op).mean()))
            elif self.steps > 0:
                opt = torch.optim.LBFGS(
                    [z], lr=self.lr, max_iter=self.steps, line_search_fn="strong_wolfe"
                )
                opt.step(closure)
            else:
                closure()
            with torch.no_grad():
                return self.flow.inverse(z.detach()) + 0.5

    def __repr__(self) -> str:
        return (
            f"LatentMAP(gamma={self.gamma:g}, steps={self.steps}, lr={self.lr:g}, init={self.init!r}, "
            f"optimizer={self.optimizer!r})"
        )


class _Discrepancy:
    """Per-image discrepancy-principle stop: keeps each latent from the first iteration that fits ``y``
    to within the noise, and records that iteration in ``solver.stopped_at`` (``steps``: never)."""

    def __init__(self, solver: LatentMAP, y: Tensor, physics: Any):
        self.solver, self.y, self.physics = solver, y, physics
        m = y[0].numel()
        self.threshold = solver.tau * m * float(solver.sigma) ** 2
        self.done = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
        self.kept: Optional[Tensor] = None
        solver.stopped_at = torch.full((y.shape[0],), solver.steps, dtype=torch.long)

    @torch.no_grad()
    def update(self, z: Tensor, it: int) -> bool:
        """Freeze the images that now fit; ``True`` when every image has stopped."""
        x = self.solver.flow.inverse(z) + 0.5
        res = ((self.physics.A(x) - self.y) ** 2).reshape(self.y.shape[0], -1).sum(1)
        new = (res <= self.threshold) & ~self.done
        if bool(new.any()):
            self.kept = z.detach().clone() if self.kept is None else torch.where(
                new.reshape(-1, *[1] * (z.dim() - 1)), z.detach(), self.kept)
            self.solver.stopped_at[new.cpu()] = it
            self.done |= new
        return bool(self.done.all())

    def final(self, z: Tensor) -> Tensor:
        if self.kept is None:
            return z.detach()
        return torch.where(self.done.reshape(-1, *[1] * (z.dim() - 1)), self.kept, z.detach())
