"""Engine: wrong gradients are never silent (double backward, the drift check's state updates, blocks that
modify their input in place), and its torch.profiler spans."""

import copy

import pytest
import torch
from torch import nn

import invprox
from invprox.core.errors import BlockError
from invprox.flows import AdditiveCoupling, AffineCoupling

DT = torch.float64


class BNCoupling(AffineCoupling):
    """An affine coupling whose network holds batch norm (running statistics: mutable state)."""

    def __init__(self):
        super().__init__(4, 8)
        self.net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 4, 3, padding=1))


class InPlace(nn.Module):
    def forward(self, x):
        x.mul_(1.0)
        return x * 2

    def inverse(self, y):
        return y / 2


def x_data(seed=0):
    return torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("check", ["warn", "fallback"])
def test_drift_check_does_not_update_batchnorm_statistics(check):
    torch.manual_seed(0)
    blocks = [BNCoupling().double() for _ in range(4)]
    ref = copy.deepcopy(blocks)
    x = x_data().requires_grad_()
    chain = invprox.InvertibleChain(blocks, keep_every=2, check=check, check_tol=1e9)
    chain(x).square().sum().backward()
    invprox.InvertibleChain(ref, memory_efficient=False)(x.detach()).square().sum().backward()
    assert chain.last_drift  # the check ran
    for b, r in zip(blocks, ref):
        assert int(b.net[1].num_batches_tracked) == 1
        torch.testing.assert_close(b.net[1].running_mean, r.net[1].running_mean, rtol=0, atol=1e-12)


def test_double_backward_raises_instead_of_returning_none():
    torch.manual_seed(0)
    chain = invprox.InvertibleChain([AdditiveCoupling(4, 6).double(), AffineCoupling(4, 6).double()])
    x = x_data().requires_grad_()
    params = list(chain.parameters())
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(chain(x).square().sum(), params, create_graph=True)
    # standard autograd (memory_efficient=False) supports it
    chain.memory_efficient = False
    grads = torch.autograd.grad(chain(x).square().sum(), params, create_graph=True)
    second = torch.autograd.grad(sum(g.square().sum() for g in grads), params, allow_unused=True)
    assert any(g is not None for g in second)


def test_in_place_modification_names_the_block():
    chain = invprox.InvertibleChain([AdditiveCoupling(4, 6).double(), InPlace()])
    with pytest.raises(BlockError, match=r"block 1 \(InPlace\) modified its input in place"):
        chain(x_data().requires_grad_())


def test_profiler_sees_the_engine_spans():
    torch.manual_seed(0)
    chain = invprox.InvertibleChain([AffineCoupling(4, 6).double() for _ in range(3)])
    x = x_data().requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        chain(x).square().sum().backward()
    counts = {e.key: e.count for e in prof.key_averages() if e.key.startswith("invprox.")}
    assert counts["invprox.forward"] == 1 and counts["invprox.backward"] == 1
    assert counts["invprox.vjp"] == 3 and counts["invprox.rebuild"] == 2  # block 0's input is kept


class TwoNetDropoutCoupling(nn.Module):
    """memcnn's additive coupling with two networks and dropout: the inverse draws G's mask before F's."""

    def __init__(self, c=4, hidden=8):
        super().__init__()
        h = c // 2
        self.F = nn.Sequential(nn.Conv2d(h, hidden, 3, padding=1), nn.Dropout(0.3), nn.Conv2d(hidden, h, 1))
        self.G = nn.Sequential(nn.Conv2d(h, hidden, 3, padding=1), nn.Dropout(0.3), nn.Conv2d(hidden, h, 1))

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        y1 = x1 + self.F(x2)
        y2 = x2 + self.G(y1)
        return torch.cat([y1, y2], dim=1)

    def inverse(self, y):
        y1, y2 = y.chunk(2, dim=1)
        x2 = y2 - self.G(y1)
        x1 = y1 - self.F(x2)
        return torch.cat([x1, x2], dim=1)


def test_block_drawing_random_numbers_gets_exact_gradients():
    torch.manual_seed(0)
    blocks = [TwoNetDropoutCoupling().double().train() for _ in range(4)]
    ref = copy.deepcopy(blocks)
    x = x_data()
    grads = []
    for bl, eff in ((blocks, True), (ref, False)):
        chain = invprox.InvertibleChain(bl, memory_efficient=eff)
        xx = x.clone().requires_grad_()
        torch.manual_seed(1)  # the same dropout masks in both forwards
        loss = chain(xx).square().sum()
        grads.append(torch.autograd.grad(loss, [xx, *chain.parameters()]))
    err = max(float((a - b).norm() / b.norm()) for a, b in zip(*grads))
    assert err < 1e-12, err  # was 2-12% when the input was rebuilt by the inverse's other mask order


def test_inverse_chain_is_built_once_and_follows_changes():
    torch.manual_seed(0)
    chain = invprox.InvertibleChain([AffineCoupling(4, 6).double(), AdditiveCoupling(4, 6).double()])
    inv = chain.inverse_chain()
    assert chain.inverse_chain() is inv  # no new wrappers per call
    assert not any(name.startswith("_inverse") for name, _ in chain.named_modules())
    chain.keep_every = 1
    assert chain.inverse_chain() is not inv and chain.inverse_chain().keep_every == 1
    chain.blocks[1] = AffineCoupling(4, 6).double()
    x = x_data()
    torch.testing.assert_close(chain.inverse(chain(x)), x)


def test_cond_is_declared_not_guessed():
    """A block that reads cond without declaring uses_cond gets none, and the error says what to declare."""

    class Shift(torch.nn.Module):
        def forward(self, x, c):
            return x + c

        def inverse(self, y, c):
            return y - c

    x = torch.randn(2, 3)
    with pytest.raises(BlockError, match="uses_cond = True"):
        invprox.InvertibleChain([Shift()])(x.requires_grad_(), torch.ones(2, 3))
    Shift.uses_cond = True
    y = invprox.InvertibleChain([Shift()])(x, torch.ones(2, 3))
    assert torch.allclose(y, x + 1)
