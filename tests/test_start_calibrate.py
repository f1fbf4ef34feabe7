"""Issue 10: a flow solver that starts as a denoiser (smooth start, lambda per latent level, calibration),
latent MAP that stops by the discrepancy principle, and training with a budget, clipping and a held-out
validation slice."""

import math

import pytest
import torch
from conftest import glow2

from invprox import testing
from invprox.flows import Glow
from invprox.metrics import psnr
from invprox.physics import make_physics
from invprox.solvers import FlowProxSolver, LatentMAP, LatentShrinkage
from invprox.solvers.start import SmoothStart, difference_gram
from invprox.train.solver_train import train_solver

DT = torch.float64


def smooth_images(n, size=8, seed=0, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, size, dtype=dtype)
    a, b, c = (torch.rand(3, n, 1, 1, 1, generator=g, dtype=dtype) * 4).unbind(0)
    return 0.5 + 0.35 * torch.sin(a * t.view(1, 1, -1, 1) + b * t.view(1, 1, 1, -1) + c)


def noisy(x, sigma, seed=1):
    return x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def test_difference_gram_is_the_gradient_of_the_smoothness_term():
    x = torch.rand(2, 3, 5, 6, dtype=DT, requires_grad=True)
    energy = 0.5 * ((x[..., 1:, :] - x[..., :-1, :]) ** 2).sum()
    energy = energy + 0.5 * ((x[..., 1:] - x[..., :-1]) ** 2).sum()
    (grad,) = torch.autograd.grad(energy, x)
    assert torch.allclose(difference_gram(x.detach()), grad, atol=1e-12)


@pytest.mark.parametrize("task", ["denoising", "inpainting", "deblurring"])
def test_smooth_start_solves_the_normal_equations_and_its_gradient_is_exact(task):
    op = make_physics(task, (1, 6, 6), **({"p_missing": 0.4} if task == "inpainting" else {}))
    start = SmoothStart(alpha=0.7)
    y = op.A(smooth_images(2, 6)).detach().requires_grad_()
    x0 = start(y, op)
    residual = op.A_adjoint(op.A(x0)) + 0.7 * difference_gram(x0) - op.A_adjoint(y)
    assert float(residual.detach().abs().max()) < 1e-8
    assert torch.autograd.gradcheck(lambda v: start(v, op), (y,))


def test_smooth_start_calibration_denoises():
    op = make_physics("denoising", (1, 8, 8))
    x = smooth_images(8)
    y = noisy(x, 0.2)
    start = SmoothStart()
    alpha = start.calibrate(y, x, op)
    assert float(start.alpha) == alpha
    assert float(psnr(start(y, op).clamp(0, 1), x).mean()) > float(psnr(y.clamp(0, 1), x).mean()) + 3
    with pytest.raises(ValueError, match="alpha"):
        SmoothStart(alpha=0.0)


def test_latent_levels_partition_the_multiscale_latent():
    g = glow2()
    levels = g.latent_levels()
    assert levels.shape == (1, 8, 8) and levels.dtype == torch.long
    # two levels: the first split takes half the entries, the last level the other half
    assert torch.bincount(levels.flatten()).tolist() == [32, 32]
    # level 0 is what the first split prior normalises: changing it leaves the other half of the
    # squeezed tensor (the channels that go on to level 1) untouched before the split
    z = torch.randn(1, 1, 8, 8, dtype=DT)
    x = g.inverse(z)
    z2 = z.clone()
    z2[0][levels == 0] += 1.0
    x2 = g.inverse(z2)
    assert not torch.allclose(x, x2)
    g3 = Glow(in_channels=3, image_size=8, levels=3, steps=1, hidden=4)
    assert torch.bincount(g3.latent_levels().flatten()).tolist() == [96, 48, 48]


def test_per_level_shrinkage_is_an_exact_invertible_prox():
    levels = glow2().latent_levels()
    s = LatentShrinkage(0.1, levels).to(DT)
    s.set_lam([0.5, 2.0])
    assert torch.allclose(s.lam, torch.tensor([0.5, 2.0], dtype=DT))
    z = torch.randn(2, 1, 8, 8, dtype=DT)
    out = s(z)
    assert torch.allclose(out[:, 0][:, levels[0] == 0], z[:, 0][:, levels[0] == 0] / 1.5)
    assert torch.allclose(out[:, 0][:, levels[0] == 1], z[:, 0][:, levels[0] == 1] / 3.0)
    assert torch.allclose(s.inverse(out), z)
    _, logdet = s.forward_and_logdet(z)
    expected = 32 * (math.log(1 / 1.5) + math.log(1 / 3.0))
    assert torch.allclose(logdet, torch.full((2,), expected, dtype=DT))
    with pytest.raises(ValueError, match="values of lambda"):
        s.set_lam([1.0, 2.0, 3.0])


def test_solver_options_are_checked():
    op = make_physics("denoising", (1, 8, 8))
    assert FlowProxSolver(glow2(), op, K=2).shrink[0].raw_lam.numel() == 2
    assert FlowProxSolver(glow2(), op, K=2, lam_per="scalar").shrink[0].raw_lam.numel() == 1
    with pytest.raises(ValueError, match="lam_per"):
        FlowProxSolver(glow2(), op, K=1, lam_per="entry")
    with pytest.raises(ValueError, match="start"):
        FlowProxSolver(glow2(), op, K=1, start="zeros")


def test_calibrated_untrained_solver_improves_on_its_input():
    op = make_physics("denoising", (1, 8, 8))
    x = smooth_images(16)
    y = noisy(x, 0.2)
    solver = FlowProxSolver(glow2(), op, K=2).to(DT)
    report = solver.calibrate(y[:8], x[:8])
    assert len(report["folds"]) == 2 and report["start_alpha"] is not None
    # greedy: every fold at least as good as its input on the calibration pairs
    assert report["folds"][0]["psnr"] >= report["start_psnr"] - 0.05
    assert report["folds"][1]["psnr"] >= report["folds"][0]["psnr"] - 0.05
    with torch.no_grad():
        out = solver(y[8:])
    noisy_psnr = float(psnr(y[8:].clamp(0, 1), x[8:]).mean())
    assert float(psnr(out.clamp(0, 1), x[8:]).mean()) > noisy_psnr + 3
    # the paper's start (the flow's mode) is no denoiser at all
    paper = FlowProxSolver(glow2(), op, K=2, start="mode", lam_per="scalar").to(DT)
    with torch.no_grad():
        assert float(psnr(paper(y[8:]).clamp(0, 1), x[8:]).mean()) < noisy_psnr + 3
    with pytest.raises(ValueError, match="as many"):
        solver.calibrate(y[:3], x[:2])


def test_latent_map_stops_by_the_discrepancy_principle():
    g = glow2()
    op = make_physics("denoising", (1, 8, 8))
    y = noisy(smooth_images(3), 0.1).to(DT)
    # a noise level so large that the start already fits: every image stops at iteration 0
    lm = LatentMAP(g, op, gamma=0.01, steps=20, sigma=10.0)
    out = lm(y)
    assert lm.stopped_at.tolist() == [0, 0, 0]
    assert torch.allclose(out, g.inverse(torch.zeros_like(y)) + 0.5)
    # at the true noise level each image stops once its residual reaches the noise, never later
    lm = LatentMAP(g, op, gamma=0.01, steps=300, lr=0.05, sigma=0.1)
    out = lm(y)
    stopped = lm.stopped_at
    assert bool((stopped < 300).all()) and bool((stopped > 0).all())
    res = ((out - y) ** 2).flatten(1).sum(1)
    assert bool((res <= 64 * 0.1**2 + 1e-9).all())
    with pytest.raises(ValueError, match="sigma"):
        LatentMAP(g, op, sigma=-1.0)


def _kw(tiny_data, **over):
    kw = dict(data=tiny_data["data"], size=8, channels=1, K=1, batch=4, epochs=3, progress=False,
              log=lambda s: None, flow=tiny_data["flow"], lr_net=1e-3, calibrate=4)
    kw.update(over)
    return kw


def test_training_budget_holdout_and_calibration_report(tiny_data, tmp_path):
    m = train_solver(out=str(tmp_path / "b"), **_kw(tiny_data, budget_minutes=1e-6, val_data="holdout",
                                                     n_val=4))
    assert m["status"] == "budget" and m["steps"] == 1  # the budget is checked before every step
    assert m["n_train"] == 12 and m["n_val"] == 4  # 16 training images: the last 4 held out
    assert m["train_cpu_s"] > 0 and m["val"][-1]["train_cpu_s"] == m["train_cpu_s"] and m["train_wall_s"] > 0
    wall = train_solver(out=str(tmp_path / "w"), **_kw(tiny_data, budget_minutes=1e-6, budget_clock="wall"))
    assert wall["status"] == "budget" and wall["steps"] == 1
    with pytest.raises(ValueError, match="budget_clock"):
        train_solver(out=str(tmp_path / "x"), **_kw(tiny_data, budget_minutes=1.0, budget_clock="gpu"))
    cal = m["calibration"]
    assert cal["psnr"] >= cal["start_psnr"] - 0.05 and len(cal["folds"]) == 1
    with pytest.raises(ValueError, match="holdout"):
        train_solver(out=str(tmp_path / "c"), **_kw(tiny_data, val_data="holdout", n_val=16))


def test_baseline_calibrates_its_smooth_start(tiny_data, tmp_path):
    m = train_solver(out=str(tmp_path / "u"), **_kw(tiny_data, prox="unet", features=4, depth=1,
                                                     max_steps=2))
    assert m["calibration"]["start_alpha"] is not None
    from invprox.train.solver_setup import load_solver

    solver, cfg = load_solver(tmp_path / "u" / "solver.pt")
    assert cfg["start"] == "smooth" and float(solver.smooth_start.alpha) == m["calibration"]["start_alpha"]


def test_solver_takes_any_flow_that_follows_the_block_protocol():
    from invprox import InvertibleChain
    from invprox.flows import AffineCoupling

    torch.manual_seed(0)
    flow = InvertibleChain([AffineCoupling(2, 6), AffineCoupling(2, 6)]).double()
    testing.randomize_parameters(flow, 0.1)
    op = make_physics("denoising", (2, 4, 4))
    x = smooth_images(3, 4).repeat(1, 2, 1, 1)
    y = noisy(x, 0.1)
    for start in ("smooth", "mode"):
        solver = FlowProxSolver(flow, op, K=2, lam_per="scalar", start=start).double()
        assert solver.image_shape is None  # taken from A^T y
        out = solver(y)
        assert out.shape == x.shape
        plain = FlowProxSolver(flow, op, K=2, lam_per="scalar", start=start, memory_efficient=False).double()
        plain.load_state_dict(solver.state_dict())
        g1 = torch.autograd.grad(solver(y).square().sum(), list(solver.parameters()))
        g2 = torch.autograd.grad(plain(y).square().sum(), list(plain.parameters()))
        assert testing.relative_error(g1, g2) < 1e-10
    with pytest.raises(TypeError, match="latent_levels"):
        FlowProxSolver(flow, op, K=1)
    with pytest.raises(TypeError, match="invertible flow"):
        FlowProxSolver(torch.nn.Conv2d(2, 2, 1), op, K=1, lam_per="scalar")


def test_calibration_can_keep_the_step(tiny_data, tmp_path):
    m = train_solver(out=str(tmp_path / "k"), **_kw(tiny_data, max_steps=1, keep_mu=True, mu_init=0.3))
    assert abs(m["calibration"]["folds"][0]["mu_fraction"] - 0.3) < 1e-6
    free = train_solver(out=str(tmp_path / "f"), **_kw(tiny_data, max_steps=1, mu_init=0.3))
    assert free["calibration"]["folds"][0]["mu_fraction"] != pytest.approx(0.3)  # chosen from the grid
