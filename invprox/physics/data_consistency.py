"""The data-consistency step as an invertible block of the engine."""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..core.block import InvertibleModule
from .dc import _check_op, dc_inverse, dc_logdet, dc_step, operator_norm_sq

__all__ = ["DataConsistency"]


class DataConsistency(InvertibleModule):
    """``x -> x - mu A^T (A x - y)`` as an invertible block, with a learned step size.

    The step is ``mu = t / ||A||^2`` with ``t = eps + (1 - 2 eps) sigmoid(raw_mu)``, ``eps = margin``,
    so it stays in ``(0, 1/||A||^2)`` (where the affine map ``I - mu A^T A`` is invertible) whatever an
    optimiser does to ``raw_mu``: the margin keeps ``t`` away from 0 and 1 even where the sigmoid
    saturates in floating point, bounds the condition number of the inverse by ``1 / margin`` and
    absorbs the error of a power-iteration norm. The measurement ``y`` is a ``cond`` input of the
    block: it is read, never inverted, and receives gradients.

    ``physics`` is the block's default operator, not a submodule: a solver passes another for one call
    with :meth:`bind` (e.g. a new random mask per batch; ``mu`` then follows the new ``||A||^2`` with the
    same fraction ``t``), and ``block.physics = op`` changes the default. It is therefore not in
    ``state_dict()`` and not moved by ``.to()``; the built-in operators cast their buffers to the input's
    device and dtype on every call. Any object with ``A`` and ``A_adjoint`` works (e.g. a deepinv
    ``Physics``): the inverse then uses conjugate gradients and ``||A||^2`` power iteration.

    Args:
        physics: the forward operator.
        mu_init: initial step as a fraction of ``1/||A||^2``, in ``(0, 1)`` (0.5 gives
            ``mu = 0.5 / ||A||^2``; for denoising ``mu`` itself).
        learn_mu: make ``raw_mu`` an :class:`torch.nn.Parameter` (else a buffer).
        margin: ``eps`` above, in ``(0, 0.5)``.

    Shapes:
        ``forward(x, y)``: ``x`` ``(B, C, H, W)``, ``y`` of the shape of ``physics.A(x)``; output like
        ``x``. ``forward_and_logdet`` also returns ``log|det(I - mu A^T A)|`` of shape ``(B,)``.

    Raises:
        TypeError: if ``physics`` has no ``A``/``A_adjoint``.
        ValueError: if ``mu_init`` is not in ``(margin, 1 - margin)`` or ``margin`` not in ``(0, 0.5)``.
    """

    uses_cond = True  # the measurement y
    draws_random = True  # it calls a user's operator, which might

    def __init__(self, physics: Any, mu_init: float = 0.5, learn_mu: bool = True, margin: float = 1e-3):
        super().__init__()
        if not (isinstance(margin, float) and 0 < margin < 0.5):
            raise ValueError(f"margin must be a float in (0, 0.5), got {margin!r}")
        if (
            isinstance(mu_init, bool)
            or not isinstance(mu_init, (int, float))
            or not (margin < mu_init < 1 - margin)
        ):
            raise ValueError(
                f"mu_init is a fraction of 1/||A||^2 and must lie in ({margin}, {1 - margin}), "
                f"got {mu_init!r}"
            )
        self.physics = physics
        self.margin = margin
        t = (mu_init - margin) / (1 - 2 * margin)
        raw = torch.tensor(math.log(t / (1 - t)))
        if learn_mu:
            self.raw_mu = nn.Parameter(raw)
        else:
            self.register_buffer("raw_mu", raw)

    # ``physics`` bypasses nn.Module registration (see the class docstring)
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "physics":
            _check_op(value)
            self.__dict__["_physics"] = value
        else:
            super().__setattr__(name, value)

    @property
    def physics(self) -> Any:
        """The current forward operator."""
        return self.__dict__["_physics"]

    def bind(self, physics: Any) -> DataConsistency:
        """This block with another operator, for one call: a view that shares ``raw_mu`` (its gradient
        reaches this block's parameter), leaving this block's own operator as it is."""
        if physics is self.physics:
            return self
        view = copy.copy(self)  # shares the parameter dict, so raw_mu is the same tensor
        view.physics = physics
        return view

    def fraction(self, raw: Tensor | None = None) -> Tensor:
        """``t = margin + (1 - 2 margin) sigmoid(raw_mu)``, the step as a fraction of ``1/||A||^2``."""
        raw = self.raw_mu if raw is None else raw
        return self.margin + (1 - 2 * self.margin) * torch.sigmoid(raw)

    @torch.no_grad()
    def set_fraction(self, t: float) -> None:
        """Set the step to ``mu = t / ||A||^2``, ``t`` in ``(margin, 1 - margin)`` (e.g. by a calibration)."""
        if not (isinstance(t, (int, float)) and self.margin < t < 1 - self.margin):
            raise ValueError(f"the step fraction must lie in ({self.margin}, {1 - self.margin}), got {t!r}")
        u = (t - self.margin) / (1 - 2 * self.margin)
        self.raw_mu.fill_(math.log(u / (1 - u)))

    def step_size(
        self,
        shape: Sequence[int] | None = None,
        device: Union[str, torch.device] | None = None,
    ) -> Tensor:
        """``mu = fraction() / ||A||^2`` for inputs of ``shape`` (0-d tensor, with its graph).

        Args:
            shape: input shape ``(B, C, H, W)``; needed where the operator's norm depends on it.
            device: device for power iteration on foreign operators.
        """
        L = operator_norm_sq(self.physics, shape, device=device)
        return self.fraction() / L

    @property
    def mu(self) -> Tensor:
        """The step size (0-d tensor; raises ``ValueError`` if ``||A||^2`` needs an input shape)."""
        return self.step_size()

    def _mu(self, x: Tensor) -> Tensor:
        L = operator_norm_sq(self.physics, tuple(x.shape), device=x.device, dtype=x.dtype)
        return self.fraction(self.raw_mu.to(dtype=x.dtype, device=x.device)) / L

    # further cond tensors after y (read by other blocks of the chain, e.g. a conditional Glow's) are ignored
    def forward(self, x: Tensor, y: Tensor, *_: Tensor) -> Tensor:
        return dc_step(self.physics, x, y, self._mu(x))

    def inverse(self, xt: Tensor, y: Tensor, *_: Tensor) -> Tensor:
        return dc_inverse(self.physics, xt, y, self._mu(xt), check=False)

    def forward_and_logdet(self, x: Tensor, y: Tensor, *_: Tensor) -> Tuple[Tensor, Tensor]:
        mu = self._mu(x)
        return dc_step(self.physics, x, y, mu), dc_logdet(self.physics, x, mu)

    def inverse_and_logdet(self, xt: Tensor, y: Tensor, *_: Tensor) -> Tuple[Tensor, Tensor]:
        mu = self._mu(xt)
        x = dc_inverse(self.physics, xt, y, mu, check=False)
        return x, -dc_logdet(self.physics, x, mu)

    def extra_repr(self) -> str:
        frac = float(self.fraction().detach())
        learn = isinstance(self.raw_mu, nn.Parameter)
        return f"physics={type(self.physics).__name__}, mu={frac:.4g}/||A||^2, learn_mu={learn}"
