"""pytest-benchmark timings of one training step of the unrolled flow-prox solver, by training method.

Collected only by ``pytest benchmarks/`` (the project's ``testpaths`` is ``tests``)::

    .venv/bin/python -m pytest benchmarks/test_solver_speed.py --benchmark-columns=median,iqr,rounds
    .venv/bin/python -m pytest benchmarks/test_solver_speed.py --benchmark-compare   # against a saved run

A small solver (batch 2 x 3 x 16 x 16, Glow 2 levels x 2 steps x 16 hidden, K = 2 and 4, untied folds), one
step = forward + MSE + backward + Adam, built as in ``benchmarks/solver_k.py``. One torch thread. The
gradient of every method is checked against standard autograd before it is timed.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import solver_k  # noqa: E402

import solver_runner as sr  # noqa: E402
from methods import import_memcnn  # noqa: E402

METHODS = ["standard", "checkpoint", "memcnn", "invprox", "invprox_keepfold"]
ARGS = ["--batch", "2", "--size", "16", "--levels", "2", "--steps", "2", "--hidden", "16", "--threads", "1"]


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    args = solver_k.parse_args(ARGS)
    flow = sr.build_flow(args)
    x, y = sr.make_batch(args, args.batch)
    return args, flow, x, y


@pytest.mark.parametrize("K", [2, 4])
@pytest.mark.parametrize("method", METHODS)
def test_training_step(benchmark, setup, method, K):
    args, flow, x, y = setup
    if method == "memcnn" and import_memcnn() is None:
        pytest.skip("memcnn is not installed")
    base = sr.build_solver(flow, K, "cpu")
    ref = sr.Runner("standard", base, args.lr)
    _, g_ref = sr.first_step(ref, x, y)
    r = sr.Runner(method, base, args.lr)
    _, g = sr.first_step(r, x, y)
    err = float((g - g_ref).norm() / g_ref.norm())
    tol = 1e-2 if method in ("memcnn", "invprox") else 1e-4  # pure inversion drifts (see SOLVER_K.md)
    assert err < tol, f"{method}: gradient error {err:.2e} against standard autograd"
    benchmark.group = f"solver training step, K={K}"
    benchmark.extra_info.update(method=method, K=K, grad_err=err)
    ok = benchmark.pedantic(lambda: r.step(x, y), rounds=5, warmup_rounds=1)
    assert ok
