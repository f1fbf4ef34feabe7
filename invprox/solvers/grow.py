"""Growing an unrolled solver: K folds initialised from a trained solver with fewer.

A step of a K-fold solver costs K fold passes, so under a budget of CPU (or GPU) time a solver with fewer
folds makes proportionally more steps (``benchmarks/TABLE1.md``, PSNR vs K: at 6 CPU minutes one fold beat
four). :func:`grow_solver` lets a deep solver start from a shallow one that was trained first: its folds are
copied, and each further fold is a copy of the last trained one, set up as (nearly) the identity, so the
grown solver starts where the small one ended:

- flow prox: ``lambda_{k,l}`` at its smallest value and the data-consistency step ``mu_k`` at the smallest
  fraction of the calibration grid; ``g_k(f_k(x)) = x`` for any Glow weights, so the copied Glow is kept
  as it was trained, and :func:`~invprox.solvers.calibrate.calibrate_flow_solver` with ``folds=`` can then
  choose each new fold's ``mu`` and ``lambda`` (the identity is in its grid);
- CNN prox (``P(x) = x + r(x)``): the residual branch's last convolution set to zero and ``mu_k`` at the same
  small fraction; the branch's other weights keep the trained values.
"""

from __future__ import annotations

import re
from typing import Dict

import torch
from torch import Tensor, nn

from .baselines import ResNetProx, UNetProx, UnrolledSolver
from .flow_prox import FlowProxSolver
from .shrinkage import _LAM_MIN

__all__ = ["grow_solver", "IDENTITY_MU"]

#: the step fraction of a new fold: the calibration grid's smallest (``x - 0.002 (x - y)`` for denoising)
IDENTITY_MU = 0.002

_FOLD_KEY = re.compile(r"^(flows|inverse_flows|dc|shrink|prox)\.(\d+)\.(.*)$")


def _zero_residual(net: nn.Module) -> None:
    """Make a residual CNN prox the identity: zero its last convolution (weight and bias)."""
    last = net.out if isinstance(net, UNetProx) else net.tail[-1] if isinstance(net, ResNetProx) else None
    if last is None:
        raise TypeError(f"cannot make a {type(net).__name__} prox the identity: grow_solver knows the "
                        f"residual branch of ResNetProx and UNetProx only")
    with torch.no_grad():
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()


def grow_solver(solver: nn.Module, source: nn.Module) -> int:
    """Initialise ``solver`` (``K`` folds) from ``source``, a trained solver of the same kind with
    ``K0 <= K`` folds; changes ``solver`` in place.

    Folds ``0 .. K0-1`` get ``source``'s folds, every fold ``k >= K0`` a copy of ``source``'s last fold set
    up as the identity (see the module docstring); everything else (the start) is ``source``'s.

    Returns:
        ``K0``, the number of folds taken over (the first new fold's index).

    Raises:
        TypeError: the two are not solvers of the same kind, or a CNN prox of unknown structure.
        ValueError: ``source`` has more folds than ``solver``, a different ``tied`` setting, or folds of
            another shape (prox options, flow architecture).
    """
    kinds = (FlowProxSolver, UnrolledSolver)
    kind = next((c for c in kinds if isinstance(solver, c)), None)
    if kind is None or not isinstance(source, kind) or type(source) is not type(solver):
        raise TypeError(f"grow_solver needs two solvers of the same kind, got {type(source).__name__} -> "
                        f"{type(solver).__name__}")
    K, K0 = solver.K, source.K
    if K0 > K:
        raise ValueError(f"the source has {K0} folds, more than the solver's {K}: growing adds folds")
    tied = bool(getattr(solver, "tied", False))
    if tied != bool(getattr(source, "tied", False)):
        raise ValueError("the source and the solver must both be tied (one shared flow) or both untied")
    state: Dict[str, Tensor] = {}
    for key, value in source.state_dict().items():
        state[key] = value
        m = _FOLD_KEY.match(key)  # a tied solver's one flow is shared, not copied
        if m is not None and int(m.group(2)) == K0 - 1 and not (tied and m.group(1).endswith("flows")):
            for k in range(K0, K):
                state[f"{m.group(1)}.{k}.{m.group(3)}"] = value.clone()
    try:
        res = solver.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise ValueError(f"the source's folds do not fit this solver (other prox options, image shape or "
                         f"flow?): {e}") from None
    missing = [k for k in res.missing_keys if not k.startswith("chain.")]
    if missing or res.unexpected_keys:
        raise ValueError(f"the source's folds do not fit this solver (other prox options or flow?): "
                         f"missing {missing[:5]}, unexpected {res.unexpected_keys[:5]}")
    for k in range(K0, K):
        solver.dc[k].set_fraction(IDENTITY_MU)
        if isinstance(solver, FlowProxSolver):
            solver.shrink[k].set_lam(_LAM_MIN)
            if hasattr(solver.shrink[k], "reset_map"):  # lam_y: the copied map gives lambda trained values
                solver.shrink[k].reset_map()
        else:
            _zero_residual(solver.prox[k])
    return K0

