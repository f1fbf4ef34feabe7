"""The engine under torch.autocast (bfloat16 on CPU): what is exact, what is within tolerance, what is not.

Reference: standard autograd under the same autocast with the weight-cast cache off (see
:mod:`invprox.core.precision`). Numbers and the decision are in ``docs/reliability.md``. CUDA (float16,
bfloat16) runs the same checks where a GPU is present (``gpu`` marker); it was not available here.
"""

from __future__ import annotations

import copy

import pytest
import torch

from invprox import InvertibleChain, testing
from invprox.core.precision import FullPrecision, audit_autocast, autocast_gradient_errors
from invprox.flows import ActNorm, AdditiveCoupling, AffineCoupling, Glow, InvConv1x1
from invprox.physics import make_physics
from invprox.solvers import FlowProxSolver

BF16 = torch.bfloat16


def _couplings(C=4, n=6, dropout=0.0):
    torch.manual_seed(0)
    blocks = [
        (AffineCoupling if i % 3 else AdditiveCoupling)(C, hidden=8, dropout=dropout) for i in range(n)
    ]
    return testing.randomize_parameters(InvertibleChain(blocks), 0.1, seed=1)


def _glow(steps=3, seed=0, size=8):
    """A Glow; its 1x1 convolutions run in float32 under autocast (InvConv1x1 does so itself)."""
    torch.manual_seed(seed)
    g = Glow(in_channels=1, image_size=size, levels=1, steps=steps, hidden=8)
    testing.randomize_parameters(g, 0.1, seed=seed)
    with torch.no_grad():  # ActNorm data init
        g(torch.rand(4, 1, size, size, generator=torch.Generator().manual_seed(seed + 1)) - 0.5)
    return g


def _pair(seed=0, size=8, batch=2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, size, size, generator=gen)
    return x, x + 0.2 * torch.randn(x.shape, generator=gen)


def test_couplings_under_autocast_equal_standard_autograd():
    """The coupling networks run in bfloat16, their inverse is still exact: no error added."""
    chain = _couplings()
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(2))
    e = autocast_gradient_errors(chain, x)
    assert e["autocast"] > 1e-4  # autocast did change the numbers: the comparison is not vacuous
    assert e["engine_vs_autocast"] < 1e-6, e
    assert e["engine_fp32"] < 1e-5, e
    with torch.autocast("cpu", dtype=BF16):
        assert chain(x.requires_grad_()).dtype == torch.float32  # the state stays float32


def test_glow_with_float32_1x1_convs_equals_standard_autograd_under_autocast():
    e = autocast_gradient_errors(_glow(), torch.rand(2, 1, 8, 8) - 0.5)
    assert e["autocast"] > 1e-4
    assert e["engine_vs_autocast"] < 1e-5, e


@pytest.mark.parametrize("keep", [None, "fold"])
def test_solver_under_autocast_within_stated_tolerance(keep):
    """The documented tolerance: the engine adds < 1/4 of autocast's own error and < 1e-2 relative."""
    x, y = _pair()
    solver = FlowProxSolver(_glow(), make_physics("denoising", (1, 8, 8)), K=2)
    if keep:
        solver.chain.keep_every = solver.fold_blocks()
    e = autocast_gradient_errors(solver, y, loss_fn=lambda out: (out.float() - x).square().mean())
    assert e["engine_vs_autocast"] < min(1e-2, 0.25 * e["autocast"]), e
    assert e["engine_autocast"] < 1.1 * e["autocast"], e


def test_keep_every_1_is_exact_under_autocast_for_any_block():
    """Checkpointing (no inversion) reproduces autocast autograd bit for bit, lossy blocks included."""
    glow = _glow()
    glow.chain.keep_every = 1
    e = autocast_gradient_errors(glow, torch.rand(2, 1, 8, 8) - 0.5)
    assert e["engine_vs_autocast"] < 1e-7, e


def test_engine_under_autocast_stays_finite_as_is():
    """Pure inversion through a solver under autocast: nothing breaks (finite, no NaN)."""
    x, y = _pair()
    solver = FlowProxSolver(_glow(), make_physics("denoising", (1, 8, 8)), K=2)
    e = autocast_gradient_errors(solver, y, loss_fn=lambda out: (out.float() - x).square().mean())
    assert all(v == v and v < 1.0 for v in e.values()), e  # finite, no NaN


def test_dropout_masks_replayed_under_autocast():
    chain = _couplings(dropout=0.3).train()
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    grads = []
    for eff in (True, False):
        m = copy.deepcopy(chain)
        m.memory_efficient = eff
        xx = x.clone().requires_grad_()
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=BF16, cache_enabled=False):
            loss = m(xx).square().mean()
        grads.append(torch.autograd.grad(loss, [xx, *m.parameters()]))
    assert testing.relative_error(grads[0], grads[1]) < 1e-6


class _LowPrecisionMix(torch.nn.Module):
    """A user block whose forward autocast quantises (a channel mixing by conv2d): not invertible there."""

    def __init__(self, channels=4):
        super().__init__()
        torch.manual_seed(0)
        self.weight = torch.nn.Parameter(torch.eye(channels) + 0.1 * torch.randn(channels, channels))

    def forward(self, x):
        return torch.nn.functional.conv2d(x, self.weight[:, :, None, None])

    def inverse(self, y):
        return torch.nn.functional.conv2d(y, torch.linalg.inv(self.weight)[:, :, None, None])


def test_audit_flags_lossy_blocks_and_full_precision_fixes_them():
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(4))
    blocks = [*_couplings(n=2).blocks, _LowPrecisionMix(), *_couplings(n=2).blocks]
    report = audit_autocast(blocks, x)
    lossy = [r for r in report if r.lossy]
    assert [r.index for r in report] == list(range(5))
    assert lossy[0].index == 2 and lossy[0].name == "_LowPrecisionMix", report
    assert lossy[0].out_dtype == BF16 and lossy[0].roundtrip_error > 1e-4
    # a coupling fed the bfloat16 state computes its own update in bfloat16: lossy too
    assert all(r.index == 2 or r.in_dtype == BF16 for r in lossy), report
    blocks[2] = FullPrecision(blocks[2])
    assert not any(r.lossy for r in audit_autocast(blocks, x)), audit_autocast(blocks, x)
    e = autocast_gradient_errors(InvertibleChain(blocks), x)
    assert e["engine_vs_autocast"] < 1e-5, e


def test_audit_glow_and_solver_with_full_precision_1x1():
    x = torch.rand(2, 1, 8, 8) - 0.5
    assert not any(r.lossy for r in audit_autocast(_glow().chain, x))
    # the solver's chain with the measurement as cond: DC, shrinkage and inverse blocks pass too
    solver = FlowProxSolver(_glow(), make_physics("denoising", (1, 8, 8)), K=1)
    _, y = _pair()
    report = audit_autocast(solver.chain, solver.start(y), y - 0.5)
    assert len(report) == len(solver.chain) and not any(r.lossy for r in report), report


def test_full_precision_wrapper_contract():
    torch.manual_seed(0)
    conv = testing.randomize_parameters(InvConv1x1(4), 0.1).double()
    wrapped = FullPrecision(conv)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    assert testing.check_roundtrip(wrapped, x) < 1e-12
    testing.check_logdet(wrapped, x[:, :, :1, :1])
    assert torch.equal(wrapped(x), conv(x))
    coupling = FullPrecision(testing.randomize_parameters(AffineCoupling(4, hidden=4), 0.2).double())
    assert testing.check_chain_gradients([coupling, FullPrecision(ActNorm(4)).double()], x)[0] < 1e-10
    with torch.autocast("cpu", dtype=BF16):
        assert FullPrecision(InvConv1x1(4))(torch.randn(1, 4, 2, 2)).dtype == torch.float32
    with pytest.raises(TypeError, match="inverse"):
        FullPrecision(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="floating"):
        FullPrecision(conv, dtype=torch.int32)


def test_glow_exact_under_autocast_as_is():
    e = autocast_gradient_errors(_glow(), torch.rand(2, 1, 8, 8) - 0.5)
    assert e["engine_vs_autocast"] < 1e-5, e


def test_backward_inside_autocast_after_float32_forward():
    chain = _couplings()
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(2))
    grads = []
    for eff in (True, False):
        m = copy.deepcopy(chain)
        m.memory_efficient = eff
        xx = x.clone().requires_grad_()
        loss = m(xx).square().sum()  # float32 forward
        with torch.autocast("cpu", dtype=BF16):  # e.g. a training step's backward inside its region
            grads.append(torch.autograd.grad(loss, [xx, *m.parameters()]))
    assert testing.relative_error(grads[0], grads[1]) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_solver_within_stated_tolerance(dtype):  # pragma: no cover - needs CUDA
    x, y = _pair()
    solver = FlowProxSolver(_glow(), make_physics("denoising", (1, 8, 8)), K=2)
    solver = solver.cuda()
    x, y = x.cuda(), y.cuda()
    e = autocast_gradient_errors(solver, y, loss_fn=lambda out: (out.float() - x).square().mean(),
                                 dtype=dtype)
    assert e["engine_vs_autocast"] < min(1e-2, 0.25 * e["autocast"]), e
