"""Growing a solver from a trained one with fewer folds (`invprox.solvers.grow`, `train --init-from`)."""

import pytest
import torch
from conftest import glow2

from invprox import testing
from invprox.flows import Glow
from invprox.physics import make_physics
from invprox.solvers import FlowProxSolver, ResNetProxSolver, UNetProxSolver
from invprox.solvers.grow import IDENTITY_MU, grow_solver
from invprox.train.solver_setup import load_solver
from invprox.train.solver_train import train_solver

DT = torch.float64


def _data(n=6, sigma=0.2):
    g = torch.Generator().manual_seed(3)
    x = 0.2 + 0.6 * torch.rand(n, 1, 8, 8, generator=g, dtype=DT)
    return x, x + sigma * torch.randn(x.shape, generator=g, dtype=DT)


def _trained_flow_solver(K):
    """A flow solver whose folds differ from each other and from the prior (as after training)."""
    op = make_physics("denoising", (1, 8, 8))
    s = FlowProxSolver(glow2(), op, K=K).to(DT)
    testing.randomize_parameters(s.flows, 0.05, seed=7)
    for k in range(K):
        s.dc[k].set_fraction(0.3 + 0.1 * k)
        s.shrink[k].set_lam([0.2 + 0.1 * k, 0.05])
    with torch.no_grad():
        s.smooth_start.alpha.fill_(0.7)
    return s.eval()


def _max_diff(a, b):
    return float((a - b).abs().max())


def test_grown_flow_solver_starts_where_the_small_one_ended():
    x, y = _data()
    small = _trained_flow_solver(2)
    big = FlowProxSolver(glow2(1), small.physics, K=4).to(DT).eval()
    assert grow_solver(big, small) == 2
    for k in range(4):
        src = min(k, 1)
        for p, q in zip(big.flows[k].parameters(), small.flows[src].parameters()):
            assert torch.equal(p, q)
        assert p.data_ptr() != q.data_ptr()  # copies, not shared
    assert torch.equal(big.shrink[1].lam, small.shrink[1].lam)
    assert abs(float(big.dc[3].fraction().detach()) - IDENTITY_MU) < 1e-9
    assert float(big.smooth_start.alpha) == 0.7
    with torch.no_grad():
        before, after = small(y), big(y)
    # two near-identity folds (mu 0.002, lambda 1e-4) change the output by far less than one fold does
    assert _max_diff(after, before) < 0.01 < _max_diff(before, small.start(y) + 0.5)
    # the new folds are trainable: the Glow's weights get gradients once lambda moves
    out = big(y)
    ((out - x) ** 2).mean().backward()
    assert big.shrink[3].raw_lam.grad is not None and float(big.shrink[3].raw_lam.grad.abs().sum()) > 0


def test_calibration_of_the_new_folds_keeps_the_trained_ones():
    x, y = _data(8)
    small = _trained_flow_solver(1)
    big = FlowProxSolver(glow2(1), small.physics, K=3).to(DT)
    grow_solver(big, small)
    kept = {k: v.clone() for k, v in big.state_dict().items() if k.startswith(("flows.", "dc.0", "shrink.0"))}
    report = big.calibrate(y, x, folds=[1, 2])
    assert report["start_alpha"] is None and float(big.smooth_start.alpha) == 0.7
    assert [f["calibrated"] for f in report["folds"]] == [False, True, True]
    for k, v in kept.items():  # the Glows and fold 0's step and shrinkage are untouched
        assert torch.equal(big.state_dict()[k], v), k
    # greedy with the identity in the grid: no new fold ends worse on the calibration pairs
    p = [f["psnr"] for f in report["folds"]]
    assert p[1] >= p[0] - 0.05 and p[2] >= p[1] - 0.05
    with pytest.raises(ValueError, match="folds must be indices"):
        big.calibrate(y, x, folds=[3])


@pytest.mark.parametrize("cls,kw", [(UNetProxSolver, {"features": 4, "depth": 1}),
                                    (ResNetProxSolver, {"features": 4, "n_blocks": 1})])
def test_grown_cnn_solver_adds_identity_folds(cls, kw):
    _, y = _data()
    op = make_physics("denoising", (1, 8, 8))
    torch.manual_seed(0)
    small = cls(op, K=2, channels=1, start="smooth", **kw).to(DT).eval()
    testing.randomize_parameters(small, 0.1, seed=2)
    big = cls(op, K=3, channels=1, start="smooth", **kw).to(DT).eval()
    grow_solver(big, small)
    for k in range(2):
        for p, q in zip(big.prox[k].parameters(), small.prox[k].parameters()):
            assert torch.equal(p, q)
    with torch.no_grad():
        new = big.prox[2]
        assert torch.equal(new(y), y)  # the residual branch is zero: the new prox is the identity
        assert _max_diff(big(y), small(y)) < 0.01


def test_growing_refuses_what_does_not_fit():
    op = make_physics("denoising", (1, 8, 8))
    small = _trained_flow_solver(2)
    with pytest.raises(ValueError, match="more than"):
        grow_solver(FlowProxSolver(glow2(), op, K=1).to(DT), small)
    with pytest.raises(ValueError, match="tied"):
        grow_solver(FlowProxSolver(glow2(), op, K=3, tied=True).to(DT), small)
    with pytest.raises(TypeError, match="same kind"):
        grow_solver(UNetProxSolver(op, K=3, channels=1, features=4, depth=1), small)
    unet = UNetProxSolver(op, K=1, channels=1, features=4, depth=1)
    with pytest.raises(ValueError, match="do not fit"):
        grow_solver(UNetProxSolver(op, K=2, channels=1, features=8, depth=1), unet)
    other = Glow(in_channels=1, image_size=8, levels=1, steps=1, hidden=4).to(DT)
    with pytest.raises(ValueError, match="do not fit"):
        grow_solver(FlowProxSolver(other, op, K=3).to(DT), small)


def _kw(tiny_data, **over):
    kw = dict(data=tiny_data["data"], size=8, channels=1, batch=4, epochs=2, progress=False,
              log=lambda s: None, lr_net=1e-3, calibrate=4, max_steps=2)
    kw.update(over)
    return kw


@pytest.mark.parametrize("prox,opts", [("flow", {}), ("unet", {"features": 4, "depth": 1})])
def test_train_init_from_grows_a_trained_run(tiny_data, tmp_path, prox, opts):
    flow = {"flow": tiny_data["flow"]} if prox == "flow" else {}
    train_solver(out=str(tmp_path / "k1"), **_kw(tiny_data, prox=prox, K=1, **flow, **opts))
    src = tmp_path / "k1" / "solver.pt"
    m = train_solver(out=str(tmp_path / "k3"), **_kw(tiny_data, prox=prox, K=3, init_from=str(src), **opts))
    assert m["init_from"]["K"] == 1 and m["init_from"]["steps"] == 2 and m["steps"] == 2
    assert m["config"]["init_from"] == str(src)
    if prox == "flow":  # only the new folds are calibrated, the start is the source's
        assert [f["calibrated"] for f in m["calibration"]["folds"]] == [False, True, True]
        assert m["calibration"]["start_alpha"] is None
    else:  # nothing to calibrate: the start is the source's
        assert m["calibration"] is None
    grown, cfg = load_solver(tmp_path / "k3" / "solver.pt")
    assert cfg["K"] == 3 and grown.K == 3
    # resuming a grown run takes its state from the checkpoint, not from the source
    m2 = train_solver(out=str(tmp_path / "k3"), resume=True, **_kw(tiny_data, prox=prox, K=3, max_steps=3,
                                                                    init_from=str(src), **opts))
    assert m2["steps"] == 3


def test_init_from_is_checked(tiny_data, tmp_path):
    train_solver(out=str(tmp_path / "u"), **_kw(tiny_data, prox="unet", K=1, features=4, depth=1))
    src = str(tmp_path / "u" / "solver.pt")
    with pytest.raises(ValueError, match="its prox is 'unet'"):
        train_solver(out=str(tmp_path / "f"), **_kw(tiny_data, prox="flow", K=2, init_from=src))
    with pytest.raises(ValueError, match="its size"):
        train_solver(out=str(tmp_path / "s"), **_kw(tiny_data, prox="unet", K=2, size=16, init_from=src,
                                                    features=4, depth=1))
    train_solver(out=str(tmp_path / "f1"), **_kw(tiny_data, prox="flow", K=1, flow=tiny_data["flow"]))
    Glow(in_channels=1, image_size=8, levels=1, steps=2, hidden=4).save(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="another Glow"):
        train_solver(out=str(tmp_path / "f2"), **_kw(tiny_data, prox="flow", K=2, init_from=str(
            tmp_path / "f1" / "solver.pt"), flow=str(tmp_path / "other.pt")))
    with pytest.raises(FileNotFoundError):
        train_solver(out=str(tmp_path / "n"), **_kw(tiny_data, prox="unet", K=2,
                                                    init_from=str(tmp_path / "none.pt")))


def test_iterates_end_at_the_output():
    _, y = _data()
    op = make_physics("denoising", (1, 8, 8))
    torch.manual_seed(0)
    unet = UNetProxSolver(op, K=2, channels=1, features=4, depth=1, start="smooth").to(DT).eval()
    for solver in (_trained_flow_solver(3), unet):
        its = solver.iterates(y)
        assert len(its) == solver.K and not its[-1].requires_grad
        with torch.no_grad():
            assert torch.allclose(its[-1], solver(y), atol=1e-10)
        assert _max_diff(its[0], its[1]) > 1e-3  # each fold does something


def test_tied_growth_and_checked_options(tiny_data, tmp_path):
    op = make_physics("denoising", (1, 8, 8))
    small = FlowProxSolver(glow2(), op, K=1, tied=True).to(DT)
    big = FlowProxSolver(glow2(1), op, K=3, tied=True).to(DT)
    assert grow_solver(big, small) == 1
    for p, q in zip(big.flows[0].parameters(), small.flows[0].parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="folds must be indices"):
        big.calibrate(*_data(4)[::-1], folds=[1.5])
    with pytest.raises(ValueError, match="keep_mu"):
        train_solver(out=str(tmp_path / "k"), **_kw(tiny_data, prox="unet", K=1, features=4, depth=1,
                                                    keep_mu=True))
    train_solver(out=str(tmp_path / "d"), **_kw(tiny_data, prox="flow", K=1, flow=tiny_data["flow"]))
    with pytest.raises(ValueError, match="its task"):
        train_solver(out=str(tmp_path / "i"), **_kw(tiny_data, prox="flow", K=2, task="inpainting",
                                                    init_from=str(tmp_path / "d" / "solver.pt")))
