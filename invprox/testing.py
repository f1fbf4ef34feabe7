"""Contract checks for invertible blocks, shipped so that users can check their own blocks.

Each function raises ``AssertionError`` with a message saying what failed (these are checks for tests, not
input validation) and returns the measured error.

Example:
    >>> import torch
    >>> from invprox.flows import AffineCoupling
    >>> from invprox import testing
    >>> block = AffineCoupling(4, hidden=8).double()
    >>> x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    >>> testing.check_roundtrip(block, x) < 1e-12
    True
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence, Tuple

import torch
from torch import Tensor, nn

from .core.block import forward_logdet, inverse_logdet
from .core.chain import InvertibleChain
from .core.precision import relative_error

__all__ = [
    "check_roundtrip",
    "check_logdet",
    "check_chain_gradients",
    "relative_error",
    "randomize_parameters",
]


def randomize_parameters(module: nn.Module, std: float = 0.2, seed: int = 0) -> nn.Module:
    """Fill every parameter with N(0, std^2) noise (seeded), so zero-initialised layers are exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def check_roundtrip(block: nn.Module, x: Tensor, *cond: Tensor, tol: float = 1e-10) -> float:
    """``inverse(forward(x)) == x`` and ``forward(inverse(y)) == y`` to ``tol`` (max abs error)."""
    with torch.no_grad():
        y = block(x, *cond)
        err = float((block.inverse(y, *cond) - x).abs().max())
        err2 = float((block(block.inverse(y, *cond), *cond) - y).abs().max())
    if max(err, err2) > tol:
        raise AssertionError(f"{type(block).__name__}: round trip error {max(err, err2):.3g} > {tol:.3g}")
    return max(err, err2)


def check_logdet(block: nn.Module, x: Tensor, *cond: Tensor, tol: float = 1e-8) -> float:
    """Forward and inverse log-determinants against ``slogdet`` of the brute-force Jacobian.

    ``x`` should be tiny (a few dozen elements per sample): the Jacobian is formed densely per sample.
    """
    err = 0.0
    with torch.no_grad():
        y, ld = forward_logdet(block, x, *cond)
        _, ld_inv = inverse_logdet(block, y, *cond)
    for i in range(x.shape[0]):
        ci = tuple(c[i : i + 1] for c in cond)

        def f(xi, ci=ci):
            return block(xi.reshape(1, *x.shape[1:]), *ci).reshape(-1)

        jac = torch.autograd.functional.jacobian(f, x[i : i + 1].reshape(-1))
        ref = torch.linalg.slogdet(jac).logabsdet
        err = max(err, float((ld[i] - ref).abs()), float((ld_inv[i] + ref).abs()))
    if err > tol:
        raise AssertionError(f"{type(block).__name__}: log-determinant error {err:.3g} > {tol:.3g}")
    return err


def check_chain_gradients(
    blocks: Sequence[nn.Module],
    x: Tensor,
    *cond: Tensor,
    loss: Callable[[Tensor, Tensor], Tensor] = lambda y, ld: y.square().sum() + ld.sum(),
    logdet: bool = True,
    tol: float = 1e-8,
    **chain_kwargs,
) -> Tuple[float, InvertibleChain]:
    """Gradients of ``loss`` through the engine against standard autograd, for ``x``, ``cond`` and params.

    Returns ``(relative error of the whole gradient vector, the engine chain)``.
    """
    chain = InvertibleChain(list(blocks), **chain_kwargs)
    plain = copy.deepcopy(chain)
    plain.memory_efficient = False
    grads = []
    for c in (chain, plain):
        xi = x.detach().clone().requires_grad_()
        ci = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in cond]
        params = list(c.parameters())
        if logdet:
            y, ld = c.forward_and_logdet(xi, *ci)
        else:
            y, ld = c(xi, *ci), _zero_logdet(xi)
        inputs = [xi, *[t for t in ci if t.requires_grad], *params]
        grads.append(torch.autograd.grad(loss(y, ld), inputs, allow_unused=True))
    err = relative_error(grads[0], grads[1])
    if err > tol:
        raise AssertionError(f"engine gradients differ from standard autograd: {err:.3g} > {tol:.3g}")
    return err, chain


def _zero_logdet(x: Tensor) -> Tensor:
    return x.new_zeros(x.shape[0])
