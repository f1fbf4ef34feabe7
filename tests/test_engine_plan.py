"""The engine's plan: bookkeeping only where a block needs it (random state replayed for the blocks that
draw, and only for those), rebuilt when the blocks change."""

from __future__ import annotations

import copy

import torch
from torch import nn

from invprox import InvertibleChain, testing
from invprox.core.plan import make_plan
from invprox.flows import AdditiveCoupling, AffineCoupling, Glow
from invprox.physics import make_physics
from invprox.solvers import FlowProxSolver

D64 = torch.float64


def test_glow_and_solver_plans_skip_what_their_blocks_do_not_need():
    glow = Glow(in_channels=1, image_size=8, levels=2, steps=2, hidden=4)
    plan = glow.chain.plan()
    assert not any(plan.draws_random) and all(plan.self_contained) and not any(plan.buffers)
    solver = FlowProxSolver(glow, make_physics("denoising", (1, 8, 8)), K=2)
    plan = solver.chain.plan()
    # only the data-consistency steps (one per fold: they call a user's operator) get the full treatment
    assert sum(plan.draws_random) == 2 and sum(not c for c in plan.self_contained) == 2
    assert "2 may draw random numbers" in plan.summary()


def test_undeclared_blocks_get_the_full_treatment():
    bn = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))
    coupling = AffineCoupling(4, net=bn)  # a network of the user's: nothing is assumed about it
    plan = make_plan([coupling, AffineCoupling(4, hidden=4, dropout=0.1)], [])
    assert plan.draws_random == [True, True] and plan.self_contained == [False, True]
    assert len(plan.buffers[0]) == 3  # running mean, running var, batches tracked


def test_plan_follows_a_replaced_parameter():
    """A parameter re-assigned after the first call gets its gradient (the plan is made again)."""
    torch.manual_seed(0)
    chain = testing.randomize_parameters(
        InvertibleChain([AffineCoupling(4, hidden=4) for _ in range(3)]).to(D64), 0.1)
    x = torch.randn(2, 4, 4, 4, dtype=D64)
    chain(x).square().sum().backward()
    first = chain.plan()
    last = chain.blocks[1].net[-1]
    last.weight = nn.Parameter(last.weight.detach().clone() + 0.1)
    assert chain.plan() is not first
    chain.zero_grad(set_to_none=True)
    chain(x).square().sum().backward()
    engine = last.weight.grad.clone()
    chain.memory_efficient = False
    last.weight.grad = None
    chain(x).square().sum().backward()
    assert torch.allclose(engine, last.weight.grad, atol=1e-12, rtol=1e-10)


def test_plan_is_kept_across_calls_and_unrelated_registrations(monkeypatch):
    """A step does not list the chain's parameters again: the plan is reused until something is registered,
    and a registration elsewhere (a new operator per batch) leaves this chain's plan as it was."""
    from invprox.core import chain as chain_mod

    chain = InvertibleChain([AffineCoupling(4, hidden=4) for _ in range(2)])
    x = torch.randn(2, 4, 4, 4, requires_grad=True)
    first = chain.plan()
    listed = []
    real = chain_mod._unique_params
    monkeypatch.setattr(chain_mod, "_unique_params", lambda m: listed.append(1) or real(m))
    for _ in range(3):
        chain(x).square().sum().backward()
    assert chain.plan() is first and not listed
    nn.Linear(2, 2)  # registers two parameters on another module
    assert chain.plan() is first and len(listed) == 1


def test_batch_norm_inside_a_coupling_counts_one_batch_per_step():
    """Buffers of undeclared modules are still restored after each recompute."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4))
    chain = InvertibleChain([AffineCoupling(4, net=net), AffineCoupling(4, hidden=4)])
    x = torch.randn(8, 4, 4, 4)
    chain(x).square().sum().backward()
    assert int(net[1].num_batches_tracked) == 1


class DropoutBlock(AffineCoupling):
    def __init__(self):
        super().__init__(4, 8, dropout=0.5)


def test_dropout_random_state_replayed():
    torch.manual_seed(0)
    blocks = [testing.randomize_parameters(DropoutBlock(), 0.3, seed=i).double() for i in range(3)]
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=D64)
    chain = InvertibleChain(blocks)
    plain = copy.deepcopy(chain)
    plain.memory_efficient = False
    grads = []
    for c in (chain, plain):
        torch.manual_seed(123)
        xi = x.clone().requires_grad_()
        grads.append(torch.autograd.grad(c(xi).square().sum(), [xi, *c.parameters()]))
    assert testing.relative_error(grads[0], grads[1]) < 1e-10
    # and the masks really were random: another seed gives other gradients
    torch.manual_seed(7)
    xi = x.clone().requires_grad_()
    other = torch.autograd.grad(chain(xi).square().sum(), [xi, *chain.parameters()])
    assert testing.relative_error(other, grads[1]) > 1e-3


def test_random_state_kept_only_for_blocks_that_draw_random_numbers():
    blocks = [AffineCoupling(4, 8).double(), DropoutBlock().double(), AdditiveCoupling(4, 8).double()]
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=D64)
    y = InvertibleChain(blocks)(x.requires_grad_())
    kept = [st.cpu_rng is not None for st in y.grad_fn.states]  # grad_fn is the Function's ctx
    assert kept == [False, True, False]
