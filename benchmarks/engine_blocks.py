"""The models of ``engine_depth.py``: a chain of couplings, one per method, and its measurements.

``depth`` couplings, alternately :class:`invprox.flows.AffineCoupling` and
:class:`invprox.flows.AdditiveCoupling`, each followed by a reversal of the channel order
(:class:`FlipAfter`) so that successive couplings transform both halves. :func:`make_model` wraps a deep
copy of the same blocks for every method with the adapters of ``methods.py``.
"""

from __future__ import annotations

import copy
import gc
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

import invprox
from invprox.core import InvertibleModule, saved_tensor_bytes
from invprox.core.block import declare_like
from invprox.flows import AdditiveCoupling, AffineCoupling

from _common import ctx_held, storage_key
from _harness import rel_err
from methods import CheckpointSequential, memcnn_sequential

#: the methods, in the order of the tables (``rebuild_floor`` only on request: ``--methods``)
METHODS = ("standard", "checkpoint", "memcnn", "invprox", "invprox_keep", "rebuild_floor", "invprox_vjp")
DEFAULT_METHODS = METHODS[:5]


class FlipAfter(InvertibleModule):
    """A coupling followed by a reversal of the channel order (so the next coupling reads the other half).

    Keeps the coupling's fused rebuild: the engine still runs the coupling network once per block in the
    backward pass.
    """

    def __init__(self, coupling: nn.Module):
        super().__init__()
        self.coupling = coupling
        declare_like(self, coupling)  # the engine's plan: what the coupling declares holds for the flip too

    def forward(self, x: Tensor, *cond: Tensor) -> Tensor:
        return self.coupling(x, *cond).flip(1)

    def inverse(self, y: Tensor, *cond: Tensor) -> Tensor:
        return self.coupling.inverse(y.flip(1), *cond)

    def forward_and_logdet(self, x: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        y, ld = self.coupling.forward_and_logdet(x, *cond)
        return y.flip(1), ld

    def inverse_and_logdet(self, y: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        return self.coupling.inverse_and_logdet(y.flip(1), *cond)

    def rebuild(self, y: Tensor, *cond: Tensor, logdet: bool = False):
        x, y_graph, ld = self.coupling.rebuild(y.flip(1), *cond, logdet=logdet)
        return x, y_graph.flip(1), ld


class _RebuildFloorFunction(torch.autograd.Function):
    """The least any engine that rebuilds activations by fused inversion does (the ``rebuild_floor``
    method): the forward without a graph, keeping the output; per block in the backward, its fused
    ``rebuild`` and one ``torch.autograd.grad``; the parameters' gradients returned through the Function
    (as the engine does, so that ``autograd.grad(loss, params)`` works). No checks, no plan, no random or
    autocast state, no buffers: correct only for blocks that need none of these (these couplings)."""

    @staticmethod
    def forward(ctx, blocks, x: Tensor, *params: Tensor) -> Tensor:
        with torch.no_grad():
            h = x
            for b in blocks:
                h = b(h)
        ctx.blocks = blocks
        ctx.save_for_backward(h)
        return h

    @staticmethod
    def backward(ctx, g: Tensor):
        (h,) = ctx.saved_tensors
        h, grads = h.detach(), []
        for b in reversed(ctx.blocks):
            with torch.enable_grad():
                x, y, _ = b.rebuild(h)
                gs = torch.autograd.grad(y, [x, *b.parameters()], g)
            g, h = gs[0], x.detach()
            grads.append(gs[1:])
        return (None, g, *[t for gs in reversed(grads) for t in gs])


class RebuildFloor(nn.Module):
    """``blocks`` run through :class:`_RebuildFloorFunction` (a measurement of the design's floor, not an
    engine: see its docstring)."""

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        return _RebuildFloorFunction.apply(list(self.blocks), x, *self.blocks.parameters())


def build_blocks(args, depth: int) -> List[nn.Module]:
    """``depth`` couplings (affine, additive, ...), seeded by ``args.seed``, on ``args.device``."""
    torch.manual_seed(args.seed)
    blocks: List[nn.Module] = []
    for i in range(depth):
        cls = AffineCoupling if i % 2 == 0 else AdditiveCoupling
        c = cls(args.channels, hidden=args.hidden)
        if args.init == "random":
            c.net[-1].reset_parameters()
        blocks.append(FlipAfter(c) if args.flip else c)
    return [b.to(device=args.device, dtype=args.dtype) for b in blocks]


def make_input(args, batch: Optional[int] = None, size: Optional[int] = None) -> Tensor:
    g = torch.Generator().manual_seed(args.seed + 1)
    shape = (batch or args.batch, args.channels, size or args.size, size or args.size)
    return torch.randn(shape, generator=g, dtype=args.dtype).to(args.device)


def make_model(method: str, blocks: Sequence[nn.Module], keep_every: int, vjp_blocks: int = 8
               ) -> Tuple[nn.Module, list]:
    """``(model, its blocks)``; the blocks are a deep copy of ``blocks`` (same weights for every method)."""
    blocks = copy.deepcopy(list(blocks))
    if method == "standard":
        model: nn.Module = nn.Sequential(*blocks)
    elif method == "checkpoint":
        model = CheckpointSequential(blocks)
    elif method == "memcnn":
        model = memcnn_sequential(blocks)
    elif method == "invprox":
        model = invprox.InvertibleChain(blocks)
    elif method == "invprox_keep":
        model = invprox.InvertibleChain(blocks, keep_every=keep_every)
    elif method == "rebuild_floor":
        model = RebuildFloor(blocks)
    elif method == "invprox_vjp":
        model = invprox.InvertibleChain(blocks, vjp_blocks=vjp_blocks)
    else:
        raise ValueError(f"unknown method {method!r}")
    return model, blocks


def method_label(method: str, keep_every: int, vjp_blocks: int = 8) -> str:
    if method == "invprox_vjp":
        return f"invprox_vjp{vjp_blocks}"
    return f"invprox_keep{keep_every}" if method == "invprox_keep" else method


def params_of(blocks: Sequence[nn.Module]) -> List[Tensor]:
    return [p for b in blocks for p in b.parameters()]


def loss_of(out: Tensor) -> Tensor:
    return out.square().mean()


def train_step(model: nn.Module, x: Tensor) -> None:
    loss_of(model(x)).backward()


def ctx_held_bytes(root: Tensor, exclude: Sequence[Tensor]) -> int:
    """Bytes of tensors held in custom-Function contexts of ``root``'s graph, except ``exclude``'s."""
    return sum(ctx_held(root, {storage_key(t) for t in exclude}).values())


def gradient_vector(blocks: Sequence[nn.Module], x: Tensor) -> Tensor:
    gs = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params_of(blocks)]
    gs.append(x.grad if x.grad is not None else torch.zeros_like(x))
    return torch.cat([g.detach().reshape(-1).double().cpu() for g in gs])


def zero_grads(params: Sequence[Tensor], to_none: bool = True) -> None:
    for p in params:
        if to_none:
            p.grad = None
        elif p.grad is not None:
            p.grad.zero_()


def measure_step(model: nn.Module, blocks: Sequence[nn.Module], x0: Tensor) -> Dict[str, Any]:
    """One step with saved-tensor accounting; returns saved/ctx bytes and the gradient vector."""
    params = params_of(blocks)
    zero_grads(params)
    x = x0.clone().requires_grad_()
    out, rec = saved_tensor_bytes(model, x, exclude=params)
    loss = loss_of(out)
    # the loss saves `out`; the chain's input is the benchmark's own tensor
    ctx = ctx_held_bytes(loss, exclude=[*params, out])
    loss.backward()
    return {"saved": rec.bytes, "ctx": ctx, "grad": gradient_vector(blocks, x)}


def roundtrip_error(blocks: Sequence[nn.Module], x0: Tensor) -> float:
    with torch.no_grad():
        h = x0
        for b in blocks:
            h = b(h)
        for b in reversed(blocks):
            h = b.inverse(h)
    return rel_err(h.double().cpu(), x0.double().cpu())


def cuda_step_peak(model, blocks, x0) -> int:
    params = params_of(blocks)
    zero_grads(params, to_none=False)  # .grad stays allocated: parameters' gradients are not counted
    x = x0.clone().requires_grad_()
    gc.collect()
    _, peak = invprox.cuda_peak_bytes(lambda: train_step(model, x), torch.device(x0.device))
    return peak


def fresh_step(model: nn.Module, blocks: Sequence[nn.Module], x0: Tensor) -> None:
    """One timed training step: gradients reset, a fresh leaf copy of the input."""
    zero_grads(params_of(blocks))
    train_step(model, x0.clone().requires_grad_())


def f64_reference(blocks: Sequence[nn.Module], x0: Tensor) -> Tensor:
    """The gradient vector of standard autograd in float64 (the exact reference of float32 runs)."""
    b64 = [copy.deepcopy(b).double() for b in blocks]
    x64 = x0.double().clone().requires_grad_()
    train_step(nn.Sequential(*b64), x64)
    return gradient_vector(b64, x64)
