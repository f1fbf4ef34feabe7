"""Glow and its layers: round trips, log-determinants, data init, bits/dim, engine gradients, memory."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from invprox import Inverse, InvertibleChain, saved_tensor_bytes, testing
from invprox.flows import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ChannelRange,
    Glow,
    InvConv1x1,
    SplitPrior,
    Squeeze,
    Unsqueeze,
    prior_log_prob,
    prior_prox,
    prior_sample,
)

D64 = torch.float64


def _randomize(module: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Non-trivial parameters (and every ActNorm marked initialised, so no data init overwrites them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in module.modules():
            if isinstance(m, ActNorm):
                m.initialized.fill_(True)
    return module


def _jac_logdet(fn, x):
    jac = torch.autograd.functional.jacobian(fn, x)
    n = x.numel()
    return torch.linalg.slogdet(jac.reshape(n, n))[1]


LAYERS = {
    "actnorm": lambda: (ActNorm(4), 4),
    "invconv": lambda: (InvConv1x1(4, generator=torch.Generator().manual_seed(1)), 4),
    "squeeze": lambda: (Squeeze(), 2),
    "unsqueeze": lambda: (Unsqueeze(), 8),
    "split_prior": lambda: (SplitPrior(4), 4),
    "affine": lambda: (AffineCoupling(4, hidden=4), 4),
    "additive": lambda: (AdditiveCoupling(4, hidden=4), 4),
    "range_affine": lambda: (ChannelRange(AffineCoupling(4, hidden=4), 4), 6),
    "range_split": lambda: (ChannelRange(SplitPrior(4), 4), 6),
    "range_invconv": lambda: (ChannelRange(InvConv1x1(2), 2), 3),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_round_trip_and_logdet(name):
    torch.manual_seed(0)
    layer, c = LAYERS[name]()
    layer = _randomize(layer.to(D64)).eval()
    x = torch.randn(1, c, 4, 4, dtype=D64)
    y, ld = layer.forward_and_logdet(x)
    assert torch.allclose(layer.inverse(y), x, atol=1e-10, rtol=0)
    xi, ld_inv = layer.inverse_and_logdet(y)
    assert torch.allclose(xi, x, atol=1e-10, rtol=0)
    assert ld.shape == (1,)
    expected = _jac_logdet(lambda t: layer(t), x)
    assert torch.allclose(ld[0], expected, atol=1e-9), (float(ld[0]), float(expected))
    assert torch.allclose(ld_inv, -ld, atol=1e-10)


@pytest.mark.parametrize("name", ["range_affine", "range_split", "invconv", "actnorm"])
def test_layer_engine_gradients_both_directions(name):
    """Blocks (and their inverses, with the fused rebuilds) through the engine == standard autograd."""
    torch.manual_seed(0)
    layer, c = LAYERS[name]()
    layer = _randomize(layer.to(D64)).eval()
    for blocks in ([layer, copy.deepcopy(layer)], [Inverse(layer), Inverse(copy.deepcopy(layer))]):
        x = torch.randn(2, c, 4, 4, dtype=D64)
        grads = []
        for eff in (False, True):
            chain = InvertibleChain(blocks, memory_efficient=eff)
            xx = x.clone().requires_grad_()
            y, ld = chain.forward_and_logdet(xx)
            ((y**2).sum() + ld.sum()).backward()
            params = list(chain.parameters())
            grads.append([xx.grad] + [p.grad.clone() for p in params])
            for p in params:
                p.grad = None
        for a, b in zip(*grads):
            assert torch.allclose(a, b, atol=1e-10, rtol=1e-8)


def test_channel_range_coupling_rebuild_is_fused():
    """Through ChannelRange, a coupling's network runs once in the forward and once in the backward."""
    torch.manual_seed(0)
    block = ChannelRange(AffineCoupling(4, hidden=4), 4)
    calls = []
    block.block.net.register_forward_hook(lambda *a: calls.append(1))
    for blocks in ([block], [Inverse(block)]):
        calls.clear()
        x = torch.randn(2, 6, 4, 4, requires_grad=True)
        InvertibleChain(blocks)(x).sum().backward()
        assert len(calls) == 2


def _glow(**kw):
    cfg = dict(in_channels=3, image_size=4, levels=2, steps=1, hidden=4)
    cfg.update(kw)
    return Glow(**cfg)


@pytest.mark.parametrize("coupling", ["affine", "additive"])
def test_glow_round_trip_and_logdet(coupling):
    torch.manual_seed(0)
    glow = _randomize(_glow(coupling=coupling, memory_efficient=False).to(D64)).eval()
    x = torch.rand(1, 3, 4, 4, dtype=D64) - 0.5
    z, ld = glow.forward_and_logdet(x)
    assert z.shape == x.shape
    assert torch.allclose(glow.inverse(z), x, atol=1e-10, rtol=0)
    expected = _jac_logdet(lambda t: glow(t), x)
    assert torch.allclose(ld[0], expected, atol=1e-8), (float(ld[0]), float(expected))
    x_back, ld_inv = glow.inverse_and_logdet(z)
    assert torch.allclose(x_back, x, atol=1e-10) and torch.allclose(ld_inv, -ld, atol=1e-9)
    # a bigger flow, several samples, memory-efficient chain: still exact
    big = _randomize(_glow(in_channels=1, image_size=8, levels=3, steps=2, coupling=coupling).to(D64))
    xb = torch.rand(3, 1, 8, 8, dtype=D64) - 0.5
    assert torch.allclose(big.inverse(big(xb)), xb, atol=1e-10, rtol=0)


def test_log_prob_matches_prior_plus_logdet():
    torch.manual_seed(0)
    for prior in ("gaussian", "laplace"):
        glow = _randomize(_glow(prior=prior).to(D64)).eval()
        x = torch.rand(2, 3, 4, 4, dtype=D64) - 0.5
        z, ld = glow.forward_and_logdet(x)
        if prior == "gaussian":
            lp = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))
        else:
            b = 1 / math.sqrt(2)
            lp = (-z.abs() / b - math.log(2 * b)).sum((1, 2, 3))
        assert torch.allclose(glow.log_prob(x), lp + ld, atol=1e-10)


def test_actnorm_data_init():
    torch.manual_seed(0)
    an = ActNorm(3)
    x = torch.randn(8, 3, 5, 5) * torch.tensor([2.0, 0.5, 3.0]).view(1, 3, 1, 1) + 4.0
    an.eval()
    an(x)
    assert not bool(an.initialized)  # no init in evaluation mode
    an.train()
    y = an(x)
    assert bool(an.initialized)
    yt = y.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(yt.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(yt.std(1, unbiased=False), torch.ones(3), atol=1e-5)
    before = an.loc.detach().clone()
    an(2 * x)  # initialised once only
    assert torch.equal(an.loc, before)
    assert bool(an.state_dict()["initialized"])


def _identity_glow(n_bits):
    """A fresh additive Glow made exactly the identity: f(x) = x."""
    glow = _glow(in_channels=1, image_size=8, coupling="additive", n_bits=n_bits).to(D64)
    with torch.no_grad():
        for m in glow.modules():
            if isinstance(m, ActNorm):
                m.initialized.fill_(True)
            if isinstance(m, InvConv1x1):
                m.perm.copy_(torch.eye(m.channels))
                m.sign_s.fill_(1.0)
                for p in (m.lower, m.upper, m.log_s):
                    p.zero_()
    return glow


@pytest.mark.parametrize("n_bits", [5, 8])
def test_bits_per_dim_closed_form(n_bits):
    glow = _identity_glow(n_bits)
    n_bins = 2**n_bits
    x = torch.rand(2, 1, 8, 8, dtype=D64) - 0.5
    assert torch.equal(glow(x), x)
    # data uniform over the bins: 8-bit values whose n_bits reduction is uniform on 0 .. n_bins - 1
    g = torch.Generator().manual_seed(3)
    k = torch.randint(0, n_bins, (256, 1, 8, 8), generator=g)
    x01 = (k * 2 ** (8 - n_bits)).to(D64) / 255.0
    with torch.no_grad():
        bpd = glow.nll_bpd(x01, generator=torch.Generator().manual_seed(5))
    xf = glow.dequantize(x01, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(xf, (k + (xf + 0.5) * n_bins - k) / n_bins - 0.5)
    assert ((xf + 0.5) * n_bins - k).min() >= 0 and ((xf + 0.5) * n_bins - k).max() < 1
    d = 64
    exact = (0.5 * (xf**2).sum((1, 2, 3)) + d * (0.5 * math.log(2 * math.pi) + math.log(n_bins)))
    assert torch.allclose(bpd, exact / (d * math.log(2)), atol=1e-12)
    # x ~ U[-1/2, 1/2): E[x^2] = 1/12, so E[bpd] = (1/24 + log(2 pi)/2 + log n_bins) / log 2
    expected = (1 / 24 + 0.5 * math.log(2 * math.pi) + math.log(n_bins)) / math.log(2)
    assert abs(float(bpd.mean()) - expected) < 2e-3
    # without dequantisation the bin centres are used
    centre = glow.nll_bpd(x01[:2], dequantize=False)
    xc = (k[:2].to(D64) + 0.5) / n_bins - 0.5
    want = (0.5 * (xc**2).sum((1, 2, 3)) / d + 0.5 * math.log(2 * math.pi) + math.log(n_bins))
    assert torch.allclose(centre, want / math.log(2), atol=1e-12)


@pytest.mark.parametrize("coupling", ["affine", "additive"])
def test_ml_gradients_engine_equal_standard(coupling):
    torch.manual_seed(0)
    ref = _randomize(_glow(in_channels=1, image_size=8, levels=2, steps=2, coupling=coupling), 0.1)
    for m in ref.modules():  # keep the data-dependent init in the test: it runs inside the chain
        if isinstance(m, ActNorm):
            m.initialized.fill_(False)
    x01 = torch.rand(3, 1, 8, 8, dtype=D64)
    grads = {}
    for eff, keep, check in ((False, None, None), (True, None, None), (True, 2, "raise")):
        glow = copy.deepcopy(ref).to(D64).train()
        glow.chain.memory_efficient, glow.chain.keep_every, glow.chain.check = eff, keep, check
        loss = glow.nll_bpd(x01, generator=torch.Generator().manual_seed(1)).mean()
        loss.backward()
        grads[(eff, keep)] = torch.cat([p.grad.flatten() for p in glow.parameters()])
        # also through the inverse g, as an unrolled solver uses it
        glow.zero_grad()
        z = torch.randn(2, 1, 8, 8, dtype=D64, generator=torch.Generator().manual_seed(2))
        glow.inverse(z).pow(2).sum().backward()
        grads[(eff, keep, "inv")] = torch.cat([p.grad.flatten() for p in glow.parameters()])
    for key in [(True, None), (True, 2)]:
        for suffix in ((), ("inv",)):
            a, b = grads[(False, None) + suffix], grads[key + suffix]
            assert (a - b).norm() <= 1e-8 * a.norm(), (key, suffix, float((a - b).norm() / a.norm()))


def test_saved_bytes_flat_in_depth():
    torch.manual_seed(0)
    x01 = torch.rand(2, 3, 8, 8)

    def saved(steps, eff):
        glow = _glow(image_size=8, steps=steps, hidden=8, memory_efficient=eff)
        glow.nll_bpd(x01)  # data init outside the measurement
        params = list(glow.parameters())
        _, rec = saved_tensor_bytes(lambda: glow.nll_bpd(x01).mean(), exclude=params)
        return rec.bytes

    small, deep = saved(1, True), saved(4, True)
    assert deep <= 1.2 * small, (small, deep)
    assert saved(4, False) > 2 * saved(1, False)  # standard autograd grows with depth


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    glow = _randomize(_glow(prior="laplace", n_bits=5, keep_every=3).to(D64)).eval()
    path = tmp_path / "glow.pt"
    glow.save(path, extra={"note": "test"})
    loaded = Glow.load(path)
    assert loaded.config == glow.config and not loaded.training
    x = torch.rand(2, 3, 4, 4, dtype=D64) - 0.5
    assert torch.equal(loaded(x), glow(x))
    assert torch.equal(loaded.log_prob(x), glow.log_prob(x))
    for k, v in glow.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(FileNotFoundError):
        Glow.load(tmp_path / "missing.pt")


@pytest.mark.parametrize("prior", ["gaussian", "laplace"])
def test_sampling_and_mode(prior):
    torch.manual_seed(0)
    glow = _randomize(_glow(image_size=8, prior=prior)).eval()
    s = glow.sample(5, temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, 3, 8, 8) and s.min() >= 0 and s.max() <= 1
    again = glow.sample(5, temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, again)
    assert torch.equal(glow.sample(2, temperature=0.0), glow.mode(2))
    assert torch.equal(glow.mode(), glow.postprocess(glow.inverse(torch.zeros(1, 3, 8, 8))))


def test_priors():
    g = torch.Generator().manual_seed(0)
    for prior in ("gaussian", "laplace"):
        z = prior_sample((20000, 10), prior, generator=g, dtype=D64)
        assert abs(float(z.mean())) < 0.02 and abs(float(z.var()) - 1) < 0.03
        assert prior_log_prob(z, prior).shape == (20000,)
    z = torch.tensor([[-2.0, -0.5, 0.0, 0.5, 3.0]])
    assert torch.allclose(prior_prox(z, 1.0), z / 2)
    lam = 0.5 / math.sqrt(2)  # threshold 0.5
    assert torch.allclose(prior_prox(z, lam, "laplace"), torch.tensor([[-1.5, 0.0, 0.0, 0.0, 2.5]]))
    # the prox minimises 0.5 (u - z)^2 - lam log p(u)
    u = torch.linspace(-4, 4, 80001, dtype=D64)
    for prior, zz in (("gaussian", 1.3), ("laplace", 1.3), ("laplace", 0.2)):
        obj = 0.5 * (u - zz) ** 2 - 0.7 * prior_log_prob(u[:, None], prior)
        best = u[obj.argmin()]
        assert abs(float(prior_prox(torch.tensor([[zz]], dtype=D64), 0.7, prior)) - float(best)) < 2e-4


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        Glow(3, image_size=12, levels=3)
    with pytest.raises(ValueError, match="coupling"):
        Glow(3, image_size=8, levels=2, coupling="spline")
    with pytest.raises(ValueError, match="prior"):
        Glow(3, image_size=8, levels=2, prior="cauchy")
    glow = _glow()
    with pytest.raises(ValueError, match="expects"):
        glow(torch.rand(1, 1, 4, 4))


def test_blocks_compose_into_a_larger_chain():
    """f's blocks, a prox and g's blocks in one chain (as an unrolled solver fold uses them)."""
    torch.manual_seed(0)
    glow = _randomize(_glow(image_size=8)).to(D64).eval()
    x = torch.rand(2, 3, 8, 8, dtype=D64) - 0.5
    assert torch.allclose(InvertibleChain(glow.flow_blocks())(x), glow(x), atol=1e-12)
    fold = InvertibleChain(glow.flow_blocks() + glow.inverse_blocks())
    assert torch.allclose(fold(x), x, atol=1e-10)


def test_bounded_scale_coupling_contract_and_bound():
    torch.manual_seed(0)
    c = testing.randomize_parameters(AffineCoupling(4, hidden=4, scale_min=0.5), std=0.5).double()
    x = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    testing.check_roundtrip(c, x)
    testing.check_logdet(c, x)
    with torch.no_grad():
        c.net[-1].bias.fill_(-1e4)  # the unbounded scale would underflow to 0 here
        _, s = c._params(x[:, :2], ())
    assert float(s.min()) >= 0.5
    with pytest.raises(ValueError, match="scale_min"):
        AffineCoupling(4, scale_min=1.0)


def test_glow_scale_min_round_trip_and_config():
    torch.manual_seed(0)
    g = testing.randomize_parameters(Glow(2, 4, levels=1, steps=2, hidden=4, scale_min=0.5), 0.3).double()
    x = torch.rand(2, 2, 4, 4, dtype=torch.float64) - 0.5
    with torch.no_grad():
        g(x)
    testing.check_roundtrip(g, x)
    assert g.config["scale_min"] == 0.5 and Glow.from_config(g.config).config["scale_min"] == 0.5


def test_load_uses_the_engine_whatever_the_flow_was_trained_with(tmp_path):
    g = Glow(1, 4, levels=1, steps=1, hidden=2, memory_efficient=False)
    g.save(tmp_path / "g.pt")
    assert Glow.load(tmp_path / "g.pt").memory_efficient
    assert not Glow.load(tmp_path / "g.pt", memory_efficient=False).memory_efficient


def test_actnorm_reads_its_flag_only_after_a_write():
    from invprox.flows import ActNorm

    a = ActNorm(3).train()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    a = a.double()
    a(x)
    loc = a.loc.detach().clone()
    a(x * 3 + 1)  # initialised: no second init
    assert torch.equal(a.loc.detach(), loc) and a._seen_version == a.initialized._version
    a.load_state_dict(ActNorm(3).double().state_dict())  # an uninitialised state: initialise again
    a(x * 3 + 1)
    assert bool(a.initialized) and not torch.allclose(a.loc.detach(), loc)
