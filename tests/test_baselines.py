"""Baselines of Table 1 (ResNet / U-Net prox), latent-space MAP, classical references, solver factory."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from invprox.flows import Glow
from invprox.physics import TASKS, make_physics
from invprox.solvers import (
    FlowProxSolver,
    LatentMAP,
    ResNetProx,
    ResNetProxSolver,
    UNetProx,
    UNetProxSolver,
    UnrolledSolver,
    bm3d_denoise,
    build_solver,
    classical_reference,
    count_parameters,
)

SHAPE = (1, 8, 8)


def _physics(task: str):
    kw = {"seed": 0} if task in ("inpainting", "compressed_sensing") else {}
    return make_physics(task, SHAPE, **kw)


def _smooth(batch: int = 2, dtype=torch.float32) -> torch.Tensor:
    u = torch.linspace(0, 1, SHAPE[-1], dtype=dtype)
    img = 0.3 + 0.4 * torch.outer(u, u.flip(0))
    return img.expand(batch, *SHAPE).contiguous()


def _glow(levels: int = 1) -> Glow:
    torch.manual_seed(0)
    return Glow(1, 8, levels=levels, steps=1, hidden=4)


def _tiny(kind: str, op, **kw):
    torch.manual_seed(0)
    if kind == "resnet":
        return build_solver("resnet", op, K=2, channels=1, image_size=8, features=4, n_blocks=1, **kw)
    if kind == "unet":
        return build_solver("unet", op, K=2, channels=1, image_size=8, features=4, depth=2, **kw)
    return build_solver("flow", op, K=2, channels=1, image_size=8, flow=_glow(kw.pop("levels", 1)), **kw)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("kind", ["resnet", "unet", "flow"])
def test_shapes_every_solver_and_task(kind, task):
    op = _physics(task)
    y = op.measure(_smooth(), 0.1, generator=torch.Generator().manual_seed(1))
    solver = _tiny(kind, op)
    with torch.no_grad():
        out = solver(y)
    assert out.shape == (2, *SHAPE) and bool(torch.isfinite(out).all())


def test_flow_solver_multilevel_glow():
    op = _physics("denoising")
    with torch.no_grad():
        out = _tiny("flow", op, levels=2)(op.measure(_smooth(), 0.1))
    assert out.shape == (2, *SHAPE)


@pytest.mark.parametrize("cls", [ResNetProx, UNetProx])
def test_prox_is_residual_any_size(cls):
    torch.manual_seed(0)
    net = cls(2, 4)
    x = torch.rand(3, 2, 6, 10)
    assert net(x).shape == x.shape
    for p in net.modules():  # zero residual branch -> identity
        if isinstance(p, torch.nn.Conv2d) and p.out_channels == 2:
            torch.nn.init.zeros_(p.weight)
            torch.nn.init.zeros_(p.bias)
    assert torch.equal(net(x), x)


@pytest.mark.parametrize("cls", [ResNetProxSolver, UNetProxSolver])
def test_checkpoint_same_gradients_and_bn_state(cls):
    op = _physics("deblurring")
    x = _smooth(dtype=torch.float64)
    y = op.measure(x, 0.1, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    torch.manual_seed(0)
    plain = cls(op, K=2, channels=1, features=4).double().train()
    ckpt = copy.deepcopy(plain)
    ckpt.checkpoint = True
    grads = []
    for model in (plain, ckpt):
        loss = ((model(y) - x) ** 2).sum()
        grads.append(torch.autograd.grad(loss, [y, *model.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for (name, a), (_, b) in zip(plain.state_dict().items(), ckpt.state_dict().items()):
        assert torch.equal(a, b), name  # running statistics updated once per fold, not in the recompute


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_mu_stays_in_range_after_huge_step(sign):
    op = _physics("compressed_sensing")
    solver = _tiny("resnet", op)
    y = op.measure(_smooth(), 0.1)
    opt = torch.optim.SGD(solver.param_groups(lr_net=0.0, lr_step=1e9))
    for _ in range(2):
        opt.zero_grad()
        (sign * solver(y).sum()).backward()
        opt.step()
    bound = 1.0 / op.norm_sq()
    for dc in solver.dc:
        mu = float(dc.step_size((2, *SHAPE)).detach())
        assert 0 < mu < bound
    assert bool(torch.isfinite(solver(y)).all())


def test_unrolled_solver_construction_and_groups():
    op = _physics("denoising")
    proto = ResNetProx(1, 4, 1)
    s = UnrolledSolver(proto, op, K=3)
    assert s.K == 3 and len({id(p) for p in s.prox}) == 3 and s.prox[0] is not proto
    s2 = UnrolledSolver([ResNetProx(1, 4, 1), UNetProx(1, 4, 1)], op)
    assert s2.K == 2
    seq = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Conv2d(2, 1, 1))
    assert UnrolledSolver(seq, op, K=2).K == 2  # a Sequential is one prox network, not a list of folds
    with pytest.raises(ValueError):
        UnrolledSolver([proto, proto], op)
    with pytest.raises(ValueError):
        UnrolledSolver([proto], op, K=2)
    with pytest.raises(ValueError):
        UnrolledSolver(lambda: ResNetProx(1, 4, 1), op)  # a factory needs K
    groups = s.param_groups(1e-5, 1e-2)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in s.parameters())
    assert len(groups[1]["params"]) == 3
    op2 = _physics("inpainting")
    s.physics = op2
    assert s.physics is op2 and all(dc.physics is op2 for dc in s.dc)
    op3 = _physics("deblurring")
    with torch.no_grad():
        out = s(op3.A(_smooth()), physics=op3)  # for this call only
        assert s.physics is op2 and all(dc.physics is op2 for dc in s.dc)
        s.physics = op3
        assert torch.allclose(s(op3.A(_smooth())), out, atol=1e-6)
    assert "physics" not in s._modules


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_latent_map_lowers_objective(optimizer):
    flow = _glow(levels=2)
    op = _physics("denoising")
    x = _smooth()
    y = op.measure(x, 0.1, generator=torch.Generator().manual_seed(3))
    solver = LatentMAP(flow, op, gamma=0.01, steps=8, lr=0.05, optimizer=optimizer)
    out = solver(y)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    assert solver.history[-1] < solver.history[0]
    assert all(p.grad is None and p.requires_grad for p in flow.parameters())
    assert flow.training


def test_latent_map_backprojection_start_is_exact_inverse():
    flow = _glow(levels=2).double()
    op = _physics("denoising")
    y = _smooth(dtype=torch.float64)
    out = LatentMAP(flow, op, gamma=0.0, steps=0, init="backprojection")(y)
    torch.testing.assert_close(out, y, rtol=0, atol=1e-8)


def test_classical_reference_all_tasks(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)  # BM3D costs seconds: its own (slow) test below
    for task in TASKS:
        op = _physics(task)
        y = op.measure(_smooth(1), 0.1, generator=torch.Generator().manual_seed(4))
        x, name = classical_reference(y, op, task, sigma=0.1)
        assert x.shape == (1, *SHAPE) and bool(torch.isfinite(x).all())
        assert isinstance(name, str) and name
    with pytest.raises(ValueError, match="valid tasks"):
        classical_reference(y, op, "dehazing")


@pytest.mark.slow
def test_bm3d_denoises_small_image():
    pytest.importorskip("bm3d")
    op = _physics("denoising")
    x = _smooth(1)
    y = op.measure(x, 0.1, generator=torch.Generator().manual_seed(6))
    out, name = classical_reference(y, op, "denoising", sigma=0.1)  # 8x8: padded (bm3d crashes on 8x8)
    assert name == "bm3d" and out.shape == y.shape and out.dtype == y.dtype
    assert float(((out - x) ** 2).mean()) < float(((y - x) ** 2).mean())


def test_classical_denoising_without_bm3d(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)  # makes `import bm3d` raise ImportError
    op = _physics("denoising")
    y = op.measure(_smooth(1), 0.1, generator=torch.Generator().manual_seed(5))
    with pytest.raises(ImportError, match="pip install bm3d"):
        bm3d_denoise(y, 0.1)
    x, name = classical_reference(y, op, "denoising", sigma=0.1)
    assert name == "nl_means" and bool(torch.isfinite(x).all())


def test_factory_and_count_parameters():
    op = _physics("denoising")
    with pytest.raises(ValueError, match="flow, resnet, unet"):
        build_solver("transformer", op, K=2, channels=1, image_size=8)
    with pytest.raises(ValueError, match="flow"):
        build_solver("flow", op, K=2, channels=1, image_size=8)
    with pytest.raises(ValueError):
        build_solver("flow", op, K=2, channels=3, image_size=8, flow=_glow())
    with pytest.raises(ValueError):
        build_solver("unet", op, K=2, channels=1, image_size=8, depth=4)
    assert isinstance(_tiny("flow", op), FlowProxSolver)
    s = _tiny("unet", op)
    assert isinstance(s, UNetProxSolver)
    assert count_parameters(s) == sum(p.numel() for p in s.parameters())
    net = torch.nn.Linear(3, 2)
    net.bias.requires_grad_(False)
    assert count_parameters(net) == 6 and count_parameters(net, trainable_only=False) == 8
