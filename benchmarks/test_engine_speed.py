"""pytest-benchmark: forward + backward of a depth-16 coupling chain, standard autograd vs invprox.

Collected by ``pytest benchmarks/`` only (the project's ``testpaths`` is ``tests/``)::

    .venv/bin/python -m pytest benchmarks/ --benchmark-only
    .venv/bin/python -m pytest benchmarks/ --benchmark-only --benchmark-compare   # against a saved run

Small sizes (4 x 8 x 16 x 16 input, hidden 32) keep each step well under a second on a laptop CPU. torch
runs on one thread here so that the numbers hold on a shared machine; the model and the step are those of
``benchmarks/engine_depth.py``.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

pytest.importorskip("pytest_benchmark")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import engine_depth as ed  # noqa: E402

import engine_blocks as eb  # noqa: E402
from _harness import rel_err  # noqa: E402

DEPTH = 16
SIZES = ["--batch", "4", "--channels", "8", "--size", "16", "--hidden", "32"]
METHODS = ["standard", "checkpoint", "invprox", "invprox_keep"]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup():
    args = ed.parse_args(SIZES)
    return args, eb.build_blocks(args, DEPTH), eb.make_input(args)


@pytest.mark.parametrize("method", METHODS)
def test_forward_backward_depth16(benchmark, setup, method):
    args, blocks, x0 = setup
    model, bl = eb.make_model(method, blocks, keep_every=8)
    params = eb.params_of(bl)

    def fresh():
        eb.zero_grads(params)
        return (model, x0.clone().requires_grad_()), {}

    benchmark.group = f"engine depth {DEPTH}"
    benchmark.extra_info.update(depth=DEPTH, input=list(x0.shape), hidden=args.hidden)
    benchmark.pedantic(eb.train_step, setup=fresh, rounds=10, warmup_rounds=1, iterations=1)


def test_invprox_gradients_match_standard(setup):
    """Not a timing: the gradients the two benchmarks compute agree (float32)."""
    _, blocks, x0 = setup
    grads = {}
    for method in ("standard", "invprox"):
        model, bl = eb.make_model(method, blocks, keep_every=8)
        x = x0.clone().requires_grad_()
        eb.train_step(model, x)
        grads[method] = eb.gradient_vector(bl, x)
    assert rel_err(grads["invprox"], grads["standard"]) < 1e-5
