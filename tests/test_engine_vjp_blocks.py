"""One vector-Jacobian product for several blocks (`InvertibleChain(vjp_blocks=n)`): the same gradients as
standard autograd, groups only of blocks that need no bookkeeping, fewer `autograd.grad` calls, and the
errors of the per-block path."""

import pytest
import torch
from conftest import glow2
from torch import nn

import invprox
from invprox import testing
from invprox.core.block import Inverse
from invprox.flows import AdditiveCoupling, AffineCoupling

DT = torch.float64


class Shift(nn.Module):
    """Reads the chain's cond, declares nothing else: a block the groups must leave to itself."""

    uses_cond = True
    volume_preserving = True

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.3, dtype=DT))

    def forward(self, x, c):
        return x + self.w * c

    def inverse(self, y, c):
        return y - self.w * c


class WrongShape(AdditiveCoupling):
    """A self-contained coupling whose inverse drops a channel."""

    def inverse(self, y, *cond):
        return super().inverse(y, *cond)[:, :3]


def _blocks(seed=0):
    torch.manual_seed(seed)
    a, b = AffineCoupling(4, hidden=5), AdditiveCoupling(4, hidden=5)
    blocks = [a, b, Inverse(AffineCoupling(4, hidden=5)), Shift(), AffineCoupling(4, hidden=5), a,
              AdditiveCoupling(4, hidden=5), b]
    for m in blocks:
        m.to(DT)
    testing.randomize_parameters(nn.ModuleList(blocks), 0.3, seed=seed)
    return blocks


@pytest.mark.parametrize("vjp_blocks", [1, 2, 3, 64])
@pytest.mark.parametrize("keep_every", [None, 4])
@pytest.mark.parametrize("logdet", [True, False])
def test_grouped_vjp_equals_standard_autograd(vjp_blocks, keep_every, logdet):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 5, 5, generator=gen, dtype=DT)
    c = torch.randn(3, 4, 5, 5, generator=gen, dtype=DT)
    err, chain = testing.check_chain_gradients(_blocks(), x, c, logdet=logdet, tol=1e-10,
                                               vjp_blocks=vjp_blocks, keep_every=keep_every)
    assert err < 1e-10 and chain.vjp_blocks == vjp_blocks


def test_glow_steps_grouped_equal_standard_autograd():
    g = glow2()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=DT) - 0.5
    err, _ = testing.check_chain_gradients(g.flow_blocks() + g.inverse_blocks()[:4], x, tol=1e-10,
                                           vjp_blocks=8)
    assert err < 1e-10


def _grad_calls(chain, x, monkeypatch):
    calls = []
    real = torch.autograd.grad

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    x = x.clone().requires_grad_()
    y = chain(x).square().sum()
    monkeypatch.setattr(torch.autograd, "grad", counting)
    y.backward()
    monkeypatch.setattr(torch.autograd, "grad", real)
    return len(calls), x.grad


def test_groups_take_one_grad_call_and_stop_at_blocks_that_need_bookkeeping(monkeypatch):
    torch.manual_seed(0)
    couplings = [AffineCoupling(4, hidden=5).to(DT) for _ in range(12)]
    x = torch.randn(2, 4, 3, 3, dtype=DT)
    n1, g1 = _grad_calls(invprox.InvertibleChain(couplings), x, monkeypatch)
    n64, g64 = _grad_calls(invprox.InvertibleChain(couplings, vjp_blocks=64), x, monkeypatch)
    n5, g5 = _grad_calls(invprox.InvertibleChain(couplings, vjp_blocks=5), x, monkeypatch)
    assert (n1, n64, n5) == (12, 1, 3)  # 12 blocks: 5 + 5 + 2
    assert testing.relative_error([g64], [g1]) < 1e-12 and testing.relative_error([g5], [g1]) < 1e-12
    # a block with dropout (random state) and an undeclared block each get a call of their own
    mixed = couplings[:4] + [AffineCoupling(4, hidden=5, dropout=0.1).to(DT)] + couplings[4:8]
    n, _ = _grad_calls(invprox.InvertibleChain(mixed, vjp_blocks=64), x, monkeypatch)
    assert n == 3  # [0, 4) | dropout | [5, 9)
    grads = []
    for vjp in (1, 64):  # the same masks (the forward's random state): the per-block path's gradient
        torch.manual_seed(5)
        grads.append(_grad_calls(invprox.InvertibleChain(mixed, vjp_blocks=vjp), x, monkeypatch)[1])
    assert testing.relative_error([grads[1]], [grads[0]]) < 1e-12


def test_grouped_errors_name_the_block():
    torch.manual_seed(0)
    # the group [2, 3] is rebuilt by inversion (a group that reaches a kept input is recomputed from it)
    chain = invprox.InvertibleChain([AdditiveCoupling(4, 4), AdditiveCoupling(4, 4), WrongShape(4, 4),
                                     AdditiveCoupling(4, 4)], vjp_blocks=2)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    with pytest.raises(invprox.BlockError, match=r"block 2 \(WrongShape\): inverse returned shape"):
        chain(x).sum().backward()
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="vjp_blocks must be a positive int"):
            invprox.InvertibleChain([AdditiveCoupling(4, 4)], vjp_blocks=bad)
