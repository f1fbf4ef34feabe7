"""torch.compile of a model holding a chain: one graph break (the chain runs eagerly), exact gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from invprox import InvertibleChain, testing
from invprox.flows import AffineCoupling, GlowStep


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pre = nn.Conv2d(4, 4, 1)
        blocks = [AffineCoupling(4, hidden=8), GlowStep(4, hidden=8), AffineCoupling(4, hidden=8)]
        self.chain = testing.randomize_parameters(InvertibleChain(blocks), 0.2)
        self.post = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.post(self.chain(self.pre(x))).square().mean()


def test_one_graph_break_and_the_same_gradients():
    dynamo = pytest.importorskip("torch._dynamo")
    dynamo.reset()
    model = _Model()
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    explained = dynamo.explain(model)(x)
    assert explained.graph_break_count == 1, [str(b.reason)[:200] for b in explained.break_reasons]
    assert "disable" in str(explained.break_reasons[0].reason)
    grads = []
    for m in (model, torch.compile(model, backend="eager")):
        model.zero_grad(set_to_none=True)
        m(x).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert testing.relative_error(grads[0], grads[1]) < 1e-6
    dynamo.reset()
