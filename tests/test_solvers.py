"""The unrolled flow-prox solver: gradients through the engine, memory flat in K, parameter handling."""

import copy

import pytest
import torch

from invprox import testing
from invprox.core import saved_tensor_bytes
from invprox.flows import Glow
from invprox.physics import make_physics
from invprox.solvers import FlowProxSolver

DT = torch.float64
TASK_KW = {"compressed_sensing": {"m": 8}, "superresolution": {"factor": 2}}


def tiny_glow(seed=0, prior="gaussian"):
    torch.manual_seed(seed)
    g = Glow(in_channels=1, image_size=4, levels=1, steps=1, hidden=3, prior=prior).to(DT)
    testing.randomize_parameters(g, 0.2, seed=seed)
    with torch.no_grad():  # initialise ActNorm once, as pre-training would
        g(torch.rand(4, 1, 4, 4, dtype=DT) - 0.5)
    return g


def measurement(op, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 1, 4, 4, generator=gen, dtype=DT)
    y = op.A(x)
    return x, y + 0.05 * torch.randn(y.shape, generator=gen, dtype=DT)


@pytest.mark.parametrize("task", ["denoising", "inpainting", "deblurring", "superresolution",
                                  "compressed_sensing"])
def test_solver_gradients_equal_standard_autograd(task):
    op = make_physics(task, (1, 4, 4), **TASK_KW.get(task, {}))
    solver = FlowProxSolver(tiny_glow(), op, K=2)
    plain = copy.deepcopy(solver)
    plain.memory_efficient = False
    x, y = measurement(op)
    grads = []
    for m in (solver, plain):
        yy = y.clone().requires_grad_()
        loss = (m(yy) - x).square().sum()
        grads.append(torch.autograd.grad(loss, [yy, *m.parameters()]))
    assert testing.relative_error(grads[0], grads[1]) < 1e-10


def test_solver_gradcheck_denoising_laplace():
    op = make_physics("denoising", (1, 4, 4))
    solver = FlowProxSolver(tiny_glow(prior="laplace"), op, K=2)
    assert solver.shrinkage == "laplace"
    _, y = measurement(op)
    y = y[:1].requires_grad_()
    assert torch.autograd.gradcheck(solver, (y,), fast_mode=True)


def test_tied_solver_shares_one_flow():
    op = make_physics("denoising", (1, 4, 4))
    g = tiny_glow()
    tied = FlowProxSolver(g, op, K=3, tied=True)
    untied = FlowProxSolver(g, op, K=3)
    n_flow = sum(p.numel() for p in g.parameters())
    n_step = 2 * 3
    assert sum(p.numel() for p in tied.parameters()) == n_flow + n_step
    assert sum(p.numel() for p in untied.parameters()) == 3 * n_flow + n_step
    x, y = measurement(op)
    (tied(y) - x).square().sum().backward()
    assert all(p.grad is not None for p in tied.parameters())


def test_activation_memory_flat_in_K_standard_grows():
    op = make_physics("denoising", (1, 4, 4))
    _, y = measurement(op)
    out = {}
    for K in (1, 8):
        modes = (("pure", {"keep_every": None}), ("fold", {}), ("standard", {"memory_efficient": False}))
        for mode, kw in modes:
            s = FlowProxSolver(tiny_glow(), op, K=K, **kw)
            _, rec = saved_tensor_bytes(lambda s=s: s(y).sum(), exclude=s.parameters())
            out[K, mode] = rec.bytes
    assert out[8, "pure"] <= 1.2 * out[1, "pure"]
    assert out[8, "fold"] - out[1, "fold"] == 7 * y.numel() * 8  # one kept image per extra fold
    assert out[8, "standard"] >= 6 * out[1, "standard"]


def test_default_keeps_fold_inputs_so_deep_solvers_do_not_drift():
    """Pure inversion through K contracting DC steps amplifies rounding by 1/(1 - mu) per fold."""
    op = make_physics("denoising", (1, 4, 4))
    g = tiny_glow().float()
    x, y = measurement(op)
    x, y = x.float(), y.float()
    errs = {}
    for mode, kw in (("pure", {"keep_every": None}), ("fold", {})):
        s = FlowProxSolver(g, op, K=24, mu_init=0.7, **kw)
        ref = copy.deepcopy(s)
        ref.memory_efficient = False
        grads = [torch.autograd.grad((m(y) - x).square().sum(), list(m.parameters())) for m in (s, ref)]
        errs[mode] = testing.relative_error(grads[0], grads[1])
    assert errs["fold"] < 1e-4
    assert not errs["pure"] < 1e-2  # drifts (or overflows to NaN)


def test_param_groups_and_step_ranges():
    op = make_physics("inpainting", (1, 4, 4), p_missing=0.3, generator=torch.Generator().manual_seed(0))
    s = FlowProxSolver(tiny_glow(), op, K=2, mu_init=0.3, lam_init=0.2)
    groups = s.param_groups(1e-5, 1e-2)
    assert len(groups[1]["params"]) == 4
    assert sum(len(g["params"]) for g in groups) == len(list(s.parameters()))
    with torch.no_grad():
        for p in s.step_parameters():
            p.fill_(1e4)
    for dc in s.dc:
        assert 0 < float(dc.mu.detach()) < 1.0 / op.norm_sq()
    x, y = measurement(op)
    assert torch.isfinite(s(y)).all()


def test_bad_arguments():
    op = make_physics("denoising", (1, 4, 4))
    with pytest.raises(ValueError, match="K must be"):
        FlowProxSolver(tiny_glow(), op, K=0)
    with pytest.raises(TypeError, match="Glow"):
        FlowProxSolver(torch.nn.Linear(2, 2), op, K=1)
    with pytest.raises(ValueError, match="shrinkage"):
        FlowProxSolver(tiny_glow(), op, K=1, shrinkage="cauchy")


def test_physics_swapped_per_call_and_not_in_state_dict():
    op1 = make_physics("inpainting", (1, 4, 4), p_missing=0.5, generator=torch.Generator().manual_seed(1))
    op2 = make_physics("inpainting", (1, 4, 4), p_missing=0.5, generator=torch.Generator().manual_seed(2))
    s = FlowProxSolver(tiny_glow(), op1, K=2)
    x, y = measurement(op2)
    out1 = s(y)
    out2 = s(y, physics=op2)
    # the operator of a call is for that call only: the solver keeps its own (deepinv's forward(y, physics))
    assert s.physics is op1 and all(dc.physics is op1 for dc in s.dc)
    assert not torch.allclose(out1, out2)
    assert torch.equal(s(y), out1)
    s.physics = op2  # changing the default gives what the call gave
    assert s.physics is op2 and all(dc.physics is op2 for dc in s.dc)
    assert torch.allclose(s(y), out2, atol=1e-6)
    assert not any("mask" in k for k in s.state_dict())


def test_physics_of_a_call_trains_the_same_parameters():
    """Gradients with ``solver(y, op)`` equal those with ``op`` as the default (engine and standard)."""
    op1 = make_physics("inpainting", (1, 4, 4), p_missing=0.5, generator=torch.Generator().manual_seed(1))
    op2 = make_physics("inpainting", (1, 4, 4), p_missing=0.5, generator=torch.Generator().manual_seed(2))
    for eff in (True, False):
        s = FlowProxSolver(tiny_glow(), op1, K=2, memory_efficient=eff).double()
        x, y = measurement(op2)
        x, y = x.double(), y.double()
        grads = []
        for per_call in (True, False):
            if not per_call:
                s.physics = op2
            s.zero_grad(set_to_none=True)
            ((s(y, op2 if per_call else None) - x) ** 2).sum().backward()
            grads.append([p.grad.clone() for p in s.parameters()])
        for a, b in zip(*grads):
            assert torch.allclose(a, b, atol=1e-10, rtol=1e-8)
        assert all(dc.raw_mu.grad is not None and dc.raw_mu.grad.abs().sum() > 0 for dc in s.dc)
