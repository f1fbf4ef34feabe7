"""Contract tests of the engine: gradients, memory, random state, state updates and errors."""

import copy

import pytest
import torch
from torch import nn

import invprox
from invprox import testing
from invprox.core import saved_tensor_bytes
from invprox.flows import AdditiveCoupling, AffineCoupling

DT = torch.float64


def mixed_blocks(c=4, hidden=6, cond_channels=1, seed=0):
    """Affine and additive couplings, an Inverse block and a block used twice."""
    torch.manual_seed(seed)
    shared = AffineCoupling(c, hidden)
    blocks = [
        AffineCoupling(c, hidden, cond_channels=cond_channels),
        AdditiveCoupling(c, hidden),
        invprox.Inverse(shared),
        AdditiveCoupling(c, hidden, cond_channels=cond_channels),
        shared,
    ]
    for i, b in enumerate(blocks):
        testing.randomize_parameters(b, std=0.3, seed=seed + i)
    return [b.to(DT) for b in blocks]


def data(c=4, hw=3, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, hw, hw, generator=g, dtype=DT)
    cond = torch.randn(b, 1, hw, hw, generator=g, dtype=DT)
    return x, cond


def test_gradcheck_inputs_cond_and_logdet():
    chain = invprox.InvertibleChain(mixed_blocks(hidden=3))
    x, c = data(hw=2, b=1)
    x.requires_grad_()
    c.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, c: chain.forward_and_logdet(x, c), (x, c))


def test_parameter_gradients_match_finite_differences():
    chain = invprox.InvertibleChain(mixed_blocks())
    x, c = data()
    params = list(chain.parameters())

    def loss():
        y, ld = chain.forward_and_logdet(x, c)
        return (y.sin() * y).sum() + ld.sum()

    grads = torch.autograd.grad(loss(), params)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = [torch.randn(p.shape, generator=g, dtype=DT) for p in params]
        eps = 1e-6
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(eps * d)
            lp = loss()
            for p, d in zip(params, v):
                p.sub_(2 * eps * d)
            lm = loss()
            for p, d in zip(params, v):
                p.add_(eps * d)
        fd = (lp - lm) / (2 * eps)
        an = sum((gi * d).sum() for gi, d in zip(grads, v))
        assert abs(float(fd - an)) <= 1e-6 * max(1.0, abs(float(an)))


def test_gradients_equal_standard_autograd_float64():
    x, c = data()
    err, _ = testing.check_chain_gradients(mixed_blocks(), x, c, tol=1e-10)
    assert err < 1e-10


def test_shared_block_gets_summed_gradient():
    torch.manual_seed(0)
    b = testing.randomize_parameters(AffineCoupling(4, 6).to(DT), std=0.3)
    x, _ = data()
    chain = invprox.InvertibleChain([b, b, invprox.Inverse(b)])
    (g_engine,) = torch.autograd.grad(chain(x).square().sum(), [b.net[0].weight])
    y = b.inverse(b(b(x)))
    (g_ref,) = torch.autograd.grad(y.square().sum(), [b.net[0].weight])
    torch.testing.assert_close(g_engine, g_ref, rtol=1e-10, atol=1e-12)


def deep_chain(depth, c=8, hidden=16, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    blocks = []
    for i in range(depth):
        blk = AffineCoupling(c, hidden) if i % 2 == 0 else AdditiveCoupling(c, hidden)
        testing.randomize_parameters(blk, std=0.05, seed=seed + i)
        blocks.append(blk.to(dtype))
    return blocks


@pytest.mark.slow
def test_float32_depth64_gradient_with_drift_policy():
    x = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    err, chain = testing.check_chain_gradients(
        deep_chain(64), x, tol=1e-4, keep_every=8, check="warn", logdet=True
    )
    assert err < 1e-4
    assert chain.last_drift  # the check ran and measured something
    # pure inversion on the same chain, for the record (well-conditioned couplings barely drift)
    err_pure, _ = testing.check_chain_gradients(deep_chain(64), x, tol=1e-2, logdet=True)
    assert err_pure < 1e-2


def saved_bytes(chain, x):
    _, rec = saved_tensor_bytes(lambda: chain(x).square().sum(), exclude=chain.parameters())
    return rec.bytes


def test_saved_bytes_flat_in_depth_while_standard_grows():
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    eng = {d: saved_bytes(invprox.InvertibleChain(deep_chain(d)), x) for d in (1, 64)}
    std = {
        d: saved_bytes(invprox.InvertibleChain(deep_chain(d), memory_efficient=False), x) for d in (1, 8)
    }
    assert eng[64] <= 1.2 * eng[1]
    assert std[8] >= 6 * std[1]
    assert eng[1] <= 2.5 * x.numel() * 4  # input and output, nothing else


def test_keep_every_costs_one_state_per_kept_block():
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    pure = saved_bytes(invprox.InvertibleChain(deep_chain(16)), x)
    kept = saved_bytes(invprox.InvertibleChain(deep_chain(16), keep_every=4), x)
    assert kept - pure == 3 * x.numel() * 4  # blocks 4, 8, 12


def test_autograd_api_grad_backward_inputs_and_leaf():
    blocks = mixed_blocks()
    chain = invprox.InvertibleChain(blocks)
    plain = invprox.InvertibleChain(copy.deepcopy(blocks), memory_efficient=False)
    x, c = data()
    res = {}
    for name, ch in (("engine", chain), ("plain", plain)):
        xi, ci = x.clone().requires_grad_(), c.clone().requires_grad_()
        ps = list(ch.parameters())
        ch(xi, ci).square().sum().backward(inputs=[xi, ci, ps[0]])
        res[name] = (xi.grad, ci.grad, ps[0].grad)
        assert all(p.grad is None for p in ps[1:])  # only the requested inputs
    for a, b in zip(res["engine"], res["plain"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_input_left_intact_and_no_grad_needed():
    chain = invprox.InvertibleChain(mixed_blocks())
    x, c = data()
    x0, v0 = x.clone(), x._version
    chain(x, c)
    assert torch.equal(x, x0) and x._version == v0
    for p in chain.parameters():
        p.requires_grad_(False)
    y = chain(x, c)  # nothing needs grad: plain run, no graph
    assert not y.requires_grad
    with torch.no_grad():
        assert not chain(x.requires_grad_(), c).requires_grad


class Captures(nn.Module):
    """A block that reads a tensor it captured instead of receiving it as cond."""

    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, x):
        return x + self.t

    def inverse(self, y):
        return y - self.t


def test_captured_tensor_raises_instead_of_losing_gradient():
    t = torch.randn(1, 4, 3, 3, dtype=DT, requires_grad=True)
    x, _ = data()
    chain = invprox.InvertibleChain([Captures(t), mixed_blocks()[1]])
    y = chain(x.requires_grad_())
    with pytest.raises(invprox.BlockError, match="neither its parameters nor conditioning"):
        y.sum().backward()


def test_captured_tensor_alone_gets_gradient():
    t = torch.randn(1, 4, 3, 3, dtype=DT, requires_grad=True)
    x, _ = data()
    chain = invprox.InvertibleChain([Captures(t)])
    chain(x).sum().backward()  # nothing else needs grad: runs under plain autograd
    torch.testing.assert_close(t.grad, torch.full_like(t, 2.0))


class BNCoupling(AffineCoupling):
    def __init__(self):
        super().__init__(4, 8)
        self.net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 4, 3, padding=1))


def test_batchnorm_statistics_not_updated_by_recompute():
    torch.manual_seed(0)
    blocks = [BNCoupling().double() for _ in range(2)]
    ref = copy.deepcopy(blocks)
    x, _ = data()
    chain = invprox.InvertibleChain(blocks)
    chain(x.requires_grad_()).square().sum().backward()
    plain = invprox.InvertibleChain(ref, memory_efficient=False)
    plain(x).square().sum().backward()
    for b, r in zip(blocks, ref):
        torch.testing.assert_close(b.net[1].running_mean, r.net[1].running_mean)
        assert int(b.net[1].num_batches_tracked) == 1


class NoInverse(nn.Module):
    def forward(self, x):
        return x


class BadInverse(nn.Module):
    def forward(self, x):
        return x * 2

    def inverse(self, y):
        return y[:, :1] / 2


def test_errors_name_the_problem():
    with pytest.raises(TypeError, match="block 1 .*NoInverse.* has no inverse"):
        invprox.InvertibleChain([AdditiveCoupling(4, 4), NoInverse()])
    with pytest.raises(ValueError, match="at least one block"):
        invprox.InvertibleChain([])
    with pytest.raises(ValueError, match="keep_every"):
        invprox.InvertibleChain([AdditiveCoupling(4, 4)], keep_every=0)
    with pytest.raises(ValueError, match="check must be"):
        invprox.InvertibleChain([AdditiveCoupling(4, 4)], keep_every=2, check="maybe")
    chain = invprox.InvertibleChain([AdditiveCoupling(4, 4)])
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        chain(x * float("nan"))
    with pytest.raises(invprox.BlockError, match=r"block 0 \(AdditiveCoupling\).*\(2, 5, 3, 3\)"):
        chain(torch.randn(2, 5, 3, 3, requires_grad=True))
    y = chain(x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward()
    bad = invprox.InvertibleChain([AdditiveCoupling(4, 4), BadInverse()])
    with pytest.raises(invprox.BlockError, match=r"block 1 \(BadInverse\): inverse returned shape"):
        bad(x).sum().backward()


class Flip(nn.Module):
    """Reverses the channels, so that consecutive couplings transform different halves."""

    volume_preserving = True

    def forward(self, x):
        return x.flip(1)

    def inverse(self, y):
        return y.flip(1)


class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def ill_conditioned_chain(depth=6, big=1e3):
    """Additive couplings whose shifts (up to ``big``) dwarf the signal: the float32 forward loses the
    low bits of x2, which inversion cannot recover."""
    blocks = []
    for i in range(depth):
        torch.manual_seed(i)
        net = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh(), Scale(big))
        blocks += [AdditiveCoupling(4, net=net), Flip()]
    return blocks


def test_drift_detected_and_fixed_by_policy():
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    blocks = ill_conditioned_chain()
    ref = copy.deepcopy(blocks)
    loss = lambda y, ld: (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum()  # noqa: E731
    pure, _ = testing.check_chain_gradients(blocks, x, loss=loss, logdet=False, tol=1e9)
    assert pure > 1e-3  # pure inversion drifts measurably
    kept, _ = testing.check_chain_gradients(ref, x, loss=loss, logdet=False, tol=1e-4, keep_every=1)
    assert kept < 1e-4
    fb, chain = testing.check_chain_gradients(
        copy.deepcopy(ref), x, loss=loss, logdet=False, tol=1e-4, keep_every=12, check="fallback",
        check_tol=1e-5,
    )
    assert fb < 1e-4 and chain.last_drift and chain.last_drift[0][1] > 1e-5
    with pytest.warns(invprox.DriftWarning, match="differs from the recomputed one"):
        testing.check_chain_gradients(copy.deepcopy(ref), x, loss=loss, logdet=False, tol=1e9,
                                      keep_every=12, check="warn", check_tol=1e-5)
    with pytest.raises(invprox.DriftError):
        testing.check_chain_gradients(copy.deepcopy(ref), x, loss=loss, logdet=False, tol=1e9,
                                      keep_every=12, check="raise", check_tol=1e-5)


def test_nested_chain_and_inverse_chain():
    inner = invprox.InvertibleChain(mixed_blocks(cond_channels=1)[:2])
    x, c = data()
    outer_blocks = [inner, AdditiveCoupling(4, 6).double()]
    err, outer = testing.check_chain_gradients(outer_blocks, x, c, tol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(outer.inverse(outer(x, c), c), x, rtol=0, atol=1e-10)
        y, ld = outer.forward_and_logdet(x, c)
        x2, ld_inv = outer.inverse_and_logdet(y, c)
    torch.testing.assert_close(ld, -ld_inv)


def test_memcnn_couplings_work_unchanged():
    memcnn = pytest.importorskip("memcnn")
    torch.manual_seed(0)

    def net():
        return nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh()).double()

    blocks = [memcnn.AdditiveCoupling(Fm=net(), Gm=net()) for _ in range(2)]
    blocks.append(memcnn.AffineCoupling(Fm=net(), Gm=net(), adapter=memcnn.AffineAdapterNaive))
    x, _ = data()
    err, _ = testing.check_chain_gradients(blocks, x, logdet=False, tol=1e-10)
    assert err < 1e-10


def test_keep_every_one_is_checkpointing():
    x, c = data()
    err, _ = testing.check_chain_gradients(mixed_blocks(), x, c, keep_every=1, tol=1e-10)
    assert err < 1e-10


class SoftThreshold(nn.Module):
    """Not invertible: the engine keeps its input."""

    invertible = False

    def forward(self, x):
        return torch.sign(x) * torch.relu(x.abs() - 0.1)


class ReadsCond(nn.Module):
    uses_cond = True

    def forward(self, x, y):
        return x + y

    def inverse(self, x, y):
        return x - y


def test_non_invertible_block_and_cond_routing():
    """Blocks get cond where they declare uses_cond, only there; a non-invertible block's input is kept."""
    x, c = data()
    c4 = c.expand(-1, 4, -1, -1).contiguous()
    blocks = [ReadsCond(), mixed_blocks()[1], SoftThreshold(), AdditiveCoupling(4, 6).double(), ReadsCond()]
    err, chain = testing.check_chain_gradients(blocks, x, c4, logdet=False, tol=1e-10)
    assert err < 1e-10
    xg = x.clone().requires_grad_()
    _, rec = saved_tensor_bytes(lambda: chain(xg, c4).sum(), exclude=chain.parameters())
    assert rec.bytes == 4 * x.numel() * 8  # input, output, cond and the soft threshold's input
    with pytest.raises(TypeError, match="invertible = False"):
        invprox.Inverse(SoftThreshold())
