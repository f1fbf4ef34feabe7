"""``build_solver``: an unrolled solver by name ("flow", "resnet", "unet"), and ``count_parameters``."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

from torch import nn

from .baselines import ResNetProxSolver, UNetProxSolver
from .flow_prox import FlowProxSolver

__all__ = ["SOLVER_KINDS", "build_solver", "count_parameters"]

SOLVER_KINDS: Tuple[str, ...] = ("flow", "resnet", "unet")


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) parameter entries of ``module``; shared parameters count once."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _hw(image_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in hw):
        raise ValueError(f"image_size must be a positive int or a pair (H, W), got {image_size!r}")
    return hw  # type: ignore[return-value]


def build_solver(
    kind: str,
    physics: Any,
    K: int = 4,
    channels: int = 3,
    image_size: Union[int, Sequence[int]] = 64,
    flow: Optional[nn.Module] = None,
    **kw: Any,
) -> nn.Module:
    """Build the unrolled solver of ``kind`` (the three columns of the seed paper's Table 1).

    Args:
        kind: ``"flow"`` (:class:`FlowProxSolver`; needs ``flow``), ``"resnet"``
            (:class:`ResNetProxSolver`) or ``"unet"`` (:class:`UNetProxSolver`); case-insensitive.
        physics: the forward operator.
        K: number of folds.
        channels: image channels (checked against the flow's for ``"flow"``).
        image_size: ``H`` or ``(H, W)``; checked against the flow's, and for ``"unet"`` against
            ``depth`` (the image must be at least ``2**depth`` on a side).
        flow: a (pre-trained) :class:`invprox.flows.Glow`, for ``"flow"`` only.
        **kw: passed on to the solver's constructor (e.g. ``features``, ``n_blocks``, ``depth``,
            ``checkpoint``, ``mu_init``; for the flow ``tied``, ``lam_init``, ``keep_every``, ...).

    Raises:
        ValueError: for an unknown kind (the message lists the valid ones), a missing flow, or
            channels/image size that do not fit.
    """
    name = kind.lower() if isinstance(kind, str) else kind
    if name not in SOLVER_KINDS:
        raise ValueError(f"unknown solver kind {kind!r}; valid kinds are: {', '.join(SOLVER_KINDS)}")
    hw = _hw(image_size)
    if name == "flow":
        if flow is None:
            raise ValueError(
                "build_solver('flow', ...) needs a pre-trained flow: pass flow=Glow(...) "
                "(e.g. invprox.flows.Glow.load(path))"
            )
        fc, fhw = getattr(flow, "in_channels", channels), tuple(getattr(flow, "image_size", hw))
        if fc != channels or fhw != hw:
            raise ValueError(
                f"the flow models {fc}x{fhw[0]}x{fhw[1]} images but channels={channels}, "
                f"image_size={hw[0]}x{hw[1]} were asked for"
            )
        return FlowProxSolver(flow, physics, K=K, **kw)
    if flow is not None:
        raise ValueError(f"flow= is only used by kind 'flow', not {name!r}")
    if name == "resnet":
        return ResNetProxSolver(physics, K=K, channels=channels, **kw)
    depth = kw.get("depth", 2)
    if isinstance(depth, int) and min(hw) < 2**depth:
        raise ValueError(f"a U-Net of depth {depth} needs images of at least {2**depth} pixels a side")
    return UNetProxSolver(physics, K=K, channels=channels, **kw)
