"""Calibration of an untrained flow solver from a few training pairs, without backprop.

A pre-trained Glow's latent is a poor place to shrink noisy images: on unseen CelebA faces at sigma 0.20
the latents of a noisy face and of its clean original are almost uncorrelated (correlation 0.01-0.02 per
level), so any ``lambda`` that the seed paper's scalar shrinkage starts from makes the image worse
(``benchmarks/TABLE1.md``). Calibration makes the untrained solver a denoiser from its first call:

1. the start ``x_0`` (:class:`~invprox.solvers.start.SmoothStart`: its ``alpha`` by grid search);
2. fold by fold, greedily: for every step fraction ``t`` of ``mu_grid``, the data-consistency step, then
   ``lambda_{k,l}`` for each latent level in turn (coordinate descent over ``lam_grid``); the pair with
   the lowest mean squared error on the clamped output is kept, and the next fold starts from this fold's
   output.

The smallest step and the smallest ``lambda`` in the grids make a fold almost the identity, so a fold never
ends worse on the calibration pairs than its input. The solver's parameters are changed in place. With
``folds``, only those folds are calibrated and the start is kept (a solver grown from a trained one,
:mod:`.grow`: its trained folds run as they are).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from ..metrics import psnr

__all__ = ["calibrate_flow_solver"]

MU_GRID = (0.002, 0.05, 0.15, 0.3, 0.5)
LAM_GRID = {
    "gaussian": (1e-4, 0.05, 0.2, 1.0),
    "laplace": (1e-4, 0.01, 0.05, 0.2),
}


def _mse(out: Tensor, x01: Tensor) -> float:
    return float(((out + 0.5).clamp(0, 1) - x01).pow(2).mean())


def _fold_report(dc: Any, shrink: Any, cur: Tensor, x: Tensor, calibrated: bool) -> Dict[str, Any]:
    return {"mu_fraction": float(dc.fraction()), "lam": [float(v) for v in shrink.lam.reshape(-1)],
            "psnr": float(psnr((cur + 0.5).clamp(0, 1), x).mean()), "calibrated": calibrated}


@torch.no_grad()
def calibrate_flow_solver(
    solver: Any,
    y: Tensor,
    x: Tensor,
    physics: Any = None,
    mu_grid: Sequence[float] = MU_GRID,
    lam_grid: Optional[Sequence[float]] = None,
    folds: Optional[Sequence[int]] = None,
) -> Dict[str, Any]:
    """Set ``solver``'s start, ``mu_k`` and ``lambda_k`` from measurement / clean-image pairs.

    Args:
        solver: a :class:`~invprox.solvers.FlowProxSolver`.
        y: measurements, shape of ``physics.A(x)``.
        x: the clean images, ``(B, C, H, W)`` in ``[0, 1]``.
        physics: their operator (default: the solver's own, which the calibration does not change).
        mu_grid: candidate step fractions ``t`` (``mu = t / ||A||^2``), each in ``(0, 1)``.
        lam_grid: candidate ``lambda`` values (default: by shrinkage, :data:`LAM_GRID`).
        folds: the folds to calibrate (default: all, and the start); the others keep their ``mu_k`` and
            ``lambda_k``, and the start its ``alpha``.

    Returns:
        A dict with ``start_alpha`` (``None`` where the start was not calibrated), ``start_psnr``,
        ``folds`` (per fold: ``mu_fraction``, ``lam``, ``psnr``, ``calibrated``) and ``psnr``: PSNR (dB)
        of the calibration pairs after the start and after each fold.

    Raises:
        ValueError: ``x`` and ``y`` hold different numbers of images, an empty grid, or a fold index out
            of range.
    """
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need as many clean images as measurements (>= 1), got {x.shape[0]} "
                         f"and {y.shape[0]}")
    lam_grid = tuple(lam_grid if lam_grid is not None else LAM_GRID[solver.shrinkage])
    if not mu_grid or not lam_grid:
        raise ValueError("mu_grid and lam_grid must not be empty")
    todo = set(range(solver.K)) if folds is None else set(folds)
    if not todo <= set(range(solver.K)):
        raise ValueError(f"folds must be indices in 0 .. {solver.K - 1}, got {sorted(todo)}")
    op = solver.physics if physics is None else physics
    was = solver.training
    solver.eval()
    try:
        report: Dict[str, Any] = {"start_alpha": None}
        if solver.smooth_start is not None and folds is None:
            report["start_alpha"] = solver.smooth_start.calibrate(y, x, op)
        cur = solver.start(y, op)
        report["start_psnr"] = float(psnr((cur + 0.5).clamp(0, 1), x).mean())
        y_flow = solver.flow_measurement(y, op)
        fc, sc = solver.fold_conds(y_flow, op)
        # one value per lambda group, or per level where several groups share a level (lam_per="channel")
        groups = solver.lam_group_level
        n_cal = solver.shrink[0].raw_lam.numel() if groups is None else max(groups) + 1
        expand = (lambda v: v) if groups is None else (lambda v: [v[g] for g in groups])
        folds_out: List[Dict[str, Any]] = []
        for k in range(solver.K):
            flow, gen = solver.fold_flows(k)
            dc, shrink = solver.dc[k].bind(op), solver.shrink[k]
            if k not in todo:
                cur = solver.fold(k, cur, y_flow, op)
                folds_out.append(_fold_report(dc, shrink, cur, x, False))
                continue
            best = None
            for t in mu_grid:
                dc.set_fraction(float(t))
                z = flow(dc(cur, y_flow), *fc)
                lam = [lam_grid[0]] * n_cal
                err = None
                for level in range(n_cal):
                    for v in lam_grid:
                        trial = lam[:level] + [v] + lam[level + 1:]
                        shrink.set_lam(expand(trial))
                        e = _mse(gen.inverse(shrink(z, *sc), *fc), x)
                        if err is None or e < err:
                            err, lam = e, trial
                if best is None or err < best[0]:
                    best = (err, float(t), lam)
            _, t, lam = best
            dc.set_fraction(t)
            shrink.set_lam(expand(lam))
            cur = solver.fold(k, cur, y_flow, op)
            folds_out.append(_fold_report(dc, shrink, cur, x, True))
        report["folds"] = folds_out
        report["psnr"] = folds_out[-1]["psnr"]
        return report
    finally:
        solver.train(was)
