"""One Glow step as one engine block: exact, fused in both directions, cached 1x1 matrix, old checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from invprox import Inverse, InvertibleChain, testing
from invprox.flows import ActNorm, Glow, GlowStep, InvConv1x1

D64 = torch.float64


def _randomize(module, scale=0.2, seed=0):
    """Non-trivial weights, every ActNorm marked initialised (no data init overwrites them)."""
    testing.randomize_parameters(module, scale, seed)
    for m in module.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)
    return module


STEPS = {
    "affine": lambda: (GlowStep(4, hidden=4, scale_min=0.3), 4),
    "additive_range": lambda: (GlowStep(4, hidden=4, coupling="additive"), 6),
    "affine_range": lambda: (GlowStep(4, hidden=4), 7),
}


@pytest.mark.parametrize("name", sorted(STEPS))
def test_round_trip_and_logdet(name):
    torch.manual_seed(0)
    step, c = STEPS[name]()
    step = _randomize(step.to(D64)).eval()
    x = torch.randn(1, c, 4, 4, dtype=D64)
    assert testing.check_roundtrip(step, x) < 1e-10
    testing.check_logdet(step, x)


@pytest.mark.parametrize("name", sorted(STEPS))
def test_engine_gradients_both_directions(name):
    """Steps (and their inverses) through the engine, with the log-det or without, == standard autograd."""
    torch.manual_seed(0)
    step, c = STEPS[name]()
    step = _randomize(step.to(D64)).train()
    x = torch.randn(2, c, 4, 4, dtype=D64)
    for blocks in ([step, copy.deepcopy(step)], [Inverse(step), Inverse(copy.deepcopy(step))],
                   [step, Inverse(copy.deepcopy(step))]):
        testing.check_chain_gradients(blocks, x, loss=lambda y, ld: y.square().sum() + 0.7 * ld.sum(),
                                      tol=1e-10)
        testing.check_chain_gradients(blocks, x, loss=lambda y, ld: y.pow(3).sum(), logdet=False, tol=1e-10)


def test_frozen_parameters_and_input_without_grad():
    """Only some parameters train, the input needs no grad: the engine still matches autograd."""
    torch.manual_seed(0)
    step = _randomize(GlowStep(4, hidden=4).to(D64))
    step.invconv.requires_grad_(False)
    step.coupling.net[0].requires_grad_(False)
    x = torch.randn(2, 6, 4, 4, dtype=D64)
    grads = []
    for eff in (False, True):
        chain = InvertibleChain([step, Inverse(copy.deepcopy(step))], memory_efficient=eff)
        (chain(x) ** 2).sum().backward()
        grads.append([p.grad.clone() for p in chain.parameters() if p.requires_grad])
        chain.zero_grad(set_to_none=True)
    assert len(grads[0]) > 0
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-8)


def test_rebuild_runs_the_network_once_per_direction():
    """A step's coupling network runs once in the forward and once in the engine's backward."""
    torch.manual_seed(0)
    step = GlowStep(4, hidden=4)
    calls = []
    step.coupling.net.register_forward_hook(lambda *a: calls.append(1))
    for blocks in ([step], [Inverse(step)]):
        calls.clear()
        x = torch.randn(2, 6, 4, 4, requires_grad=True)
        InvertibleChain(blocks)(x).sum().backward()
        assert len(calls) == 2


def test_invconv_matrix_is_cached_until_the_parameters_change():
    conv = InvConv1x1(3, generator=torch.Generator().manual_seed(0))
    inversions = []
    real_inv = torch.linalg.inv
    try:
        torch.linalg.inv = lambda w: inversions.append(1) or real_inv(w)
        x = torch.randn(2, 3, 4, 4)
        with torch.no_grad():
            y = conv(x)
            for _ in range(3):
                assert torch.allclose(conv.inverse(y), x, atol=1e-5)
        assert len(inversions) == 1
        with torch.no_grad():
            conv.log_s.add_(0.1)  # an optimizer step: the cache must not be used
            assert torch.allclose(conv.inverse(conv(x)), x, atol=1e-5)
        assert len(inversions) == 2
        conv.inverse(y).sum().backward()  # with a graph: computed, differentiable
        assert conv.log_s.grad is not None and len(inversions) == 3
    finally:
        torch.linalg.inv = real_inv


@pytest.mark.parametrize("kw", [{"fused": True}, {"foreach": True}, {"foreach": False}])
def test_invconv_cache_sees_every_optimizer_step(kw):
    """torch's fused optimizers update parameters in place without bumping their version counters (torch
    2.13 on the CPU): the cached matrix must follow the parameters' values, not their versions."""
    conv = InvConv1x1(3, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(conv.parameters(), lr=0.1, **kw)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        conv(x)  # fills the cache
    conv(x).square().sum().backward()
    opt.step()
    with torch.no_grad():
        cached = conv(x)
    assert torch.equal(cached, F.conv2d(x, conv.weight().detach().view(3, 3, 1, 1)))


def test_glow_is_one_block_per_step_and_loads_the_old_layout():
    """A Glow's chain holds one block per flow step; a state dict of the three-blocks-a-step layout
    (flows saved before, and the committed prior) loads into it and gives the same flow."""
    torch.manual_seed(0)
    glow = _randomize(Glow(in_channels=3, image_size=8, levels=2, steps=2, hidden=4)).eval()
    assert sum(isinstance(b, GlowStep) for b in glow.chain.blocks) == 4
    assert len(glow.chain.blocks) == 2 + 4 + 1 + 2  # squeezes, steps, split prior, unsqueezes
    # write the same weights under the old names: blocks [sq, an, ic, cp, an, ic, cp, split, sq, ...]
    old = {}
    new_to_old = {1: 1, 2: 4, 3: 7, 4: 8, 5: 9, 6: 12}
    comp = {"actnorm": 0, "invconv": 1, "coupling": 2}
    for name, t in glow.state_dict().items():
        parts = name.split(".")
        i = int(parts[2])
        if parts[3] in comp:
            o = new_to_old[i] + comp[parts[3]]
            wrapped = i >= 5  # level 1 acts on half the channels: ChannelRange(...).block
            old[".".join(["chain", "blocks", str(o)] + (["block"] if wrapped else []) + parts[4:])] = t
        else:
            old[".".join(["chain", "blocks", str(new_to_old[i])] + parts[3:])] = t
    fresh = Glow(in_channels=3, image_size=8, levels=2, steps=2, hidden=4).eval()
    fresh.load_state_dict(old)
    x = torch.rand(2, 3, 8, 8) - 0.5
    with torch.no_grad():
        assert torch.equal(fresh(x), glow(x))
