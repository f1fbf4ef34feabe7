"""A flow prox whose folds' g_k are the inverses of their own copies of the flow (`FlowProxSolver(
untie_inverse=True)`, `train --untie-inverse`): it starts as the tied-inverse solver, trains exactly through
the engine, and both flows train."""

import pytest
import torch
from conftest import engine_matches_standard, glow2, noisy_pair
from conftest import flow_train_kw as _kw

from invprox import testing
from invprox.physics import make_physics
from invprox.solvers import FlowProxSolver
from invprox.train.solver_setup import load_solver
from invprox.train.solver_train import train_solver

DT = torch.float64


@pytest.mark.parametrize("cond_y", [False, True])
def test_untied_inverse_starts_as_f_inverse_and_trains_exactly(cond_y):
    op = make_physics("denoising", (1, 8, 8))
    x, y = noisy_pair()
    plain = FlowProxSolver(glow2(), op, K=2, cond_y=cond_y).to(DT).eval()
    untied = FlowProxSolver(glow2(), op, K=2, cond_y=cond_y, untie_inverse=True).to(DT).eval()
    assert plain.inverse_flows is None and len(untied.inverse_flows) == 2
    assert untied.fold_blocks() == plain.fold_blocks()
    with torch.no_grad():
        assert torch.equal(untied(y), plain(y))
    assert untied.calibrate(y, x)["psnr"] == plain.calibrate(y, x)["psnr"]
    # apart, as after training: g_k is now the inverse of the other flow
    testing.randomize_parameters(untied.inverse_flows, 0.05, seed=7)
    with torch.no_grad():
        out = untied(y)
        assert (out - plain(y)).abs().max() > 1e-4
        assert torch.allclose(untied.iterates(y)[-1], out, atol=1e-12)  # fold() is the chain's fold
    engine_matches_standard(untied, x, y, cond_y=cond_y, untie_inverse=True)
    for flows in (untied.flows, untied.inverse_flows):  # both flows get gradients
        assert sum(float(p.grad.abs().sum()) for p in flows.parameters() if p.grad is not None) > 0


def test_untied_inverse_parameter_groups_and_tied_folds():
    op = make_physics("denoising", (1, 8, 8))
    s = FlowProxSolver(glow2(), op, K=2, untie_inverse=True).to(DT)
    inv = {id(p) for p in s.inverse_flows.parameters()}
    coupling = {id(p) for p in s.coupling_parameters()}
    assert inv & coupling and inv - coupling  # the inverse flows' couplings (not their ActNorm, 1x1 convs)
    level0 = {id(p) for p in s.level_parameters([0])}
    assert level0 & inv and level0 - inv  # a level of both flows
    frozen = s.param_groups(lr_net=1e-4, freeze_levels=[1])[-1]
    assert frozen["lr"] == 0.0 and {id(p) for p in frozen["params"]} & inv
    tied = FlowProxSolver(glow2(), op, K=3, tied=True, untie_inverse=True).to(DT)
    assert len(tied.flows) == 1 and len(tied.inverse_flows) == 1
    assert tied.fold_flows(2) == (tied.flows[0], tied.inverse_flows[0])


def test_train_untie_inverse_saves_resumes_grows_and_checks(tiny_data, tmp_path):
    m = train_solver(out=str(tmp_path / "u1"), **_kw(tiny_data, K=1, untie_inverse=True, lr_coupling=1e-2))
    assert m["config"]["untie_inverse"] is True and m["steps"] == 2
    solver, cfg = load_solver(tmp_path / "u1" / "solver.pt")
    assert cfg["untie_inverse"] and solver.inverse_flows is not None
    f, g = solver.fold_flows(0)
    assert any(not torch.equal(p, q) for p, q in zip(f.parameters(), g.parameters()))  # trained apart
    m2 = train_solver(out=str(tmp_path / "u1"), resume=True,
                      **_kw(tiny_data, K=1, untie_inverse=True, lr_coupling=1e-2, max_steps=3))
    assert m2["steps"] == 3
    src = str(tmp_path / "u1" / "solver.pt")
    solver = load_solver(src)[0]
    train_solver(out=str(tmp_path / "u2"), **_kw(tiny_data, K=2, untie_inverse=True, max_steps=0,
                                                 init_from=src))
    grown = load_solver(tmp_path / "u2" / "solver.pt")[0]
    for k in (0, 1):  # fold 0 is the source's, fold 1 a copy of it (both flows)
        assert all(torch.equal(p, q) for p, q in zip(grown.inverse_flows[k].parameters(),
                                                     solver.inverse_flows[0].parameters()))
    with pytest.raises(ValueError, match="its untie_inverse is True"):
        train_solver(out=str(tmp_path / "u3"), **_kw(tiny_data, K=2, init_from=src))
    with pytest.raises(ValueError, match="untie_inverse is an option of the flow prox"):
        train_solver(out=str(tmp_path / "u4"), **_kw(tiny_data, prox="unet", flow=None, features=4, depth=1,
                                                     untie_inverse=True))
