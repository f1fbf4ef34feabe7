"""The invertible-block contract.

A block is any :class:`torch.nn.Module` with

* ``forward(x, *cond) -> y``
* ``inverse(y, *cond) -> x``

and optionally

* ``forward_and_logdet(x, *cond) -> (y, logdet)``, ``logdet`` of shape ``(B,)``: the log absolute
  determinant of the Jacobian ``dy/dx`` per sample;
* ``inverse_and_logdet(y, *cond) -> (x, logdet)``: the same for the inverse map (``-logdet`` of the forward
  at ``x``);
* ``rebuild(y, *cond, logdet=False) -> (x, y_graph, logdet_graph)``: a fused rebuild for the engine's
  backward pass. Given the detached output ``y`` it returns the rebuilt input ``x`` as a leaf tensor that
  requires grad, ``y_graph`` (value ``forward(x)``) with a graph back to ``x``, ``cond`` and the block's
  parameters, and, when ``logdet`` is true, the log-determinant with its graph (else ``None``). An affine
  coupling does this with one pass of its network instead of two.
* ``volume_preserving = True``: its log-determinant is zero (additive couplings, permutations).
* ``uses_cond = True``: ``forward`` (and ``inverse``) take the ``cond`` tensors after the input. Declared,
  never guessed: a block without the attribute is called with its input alone (memcnn's couplings, say).
* ``invertible = False``: a block with no inverse (soft thresholding, say). The engine keeps its input in
  the forward pass, as checkpointing would, and inverts nothing through it.

Declarations that let the engine skip bookkeeping (its *plan*, computed once per set of blocks). Each is
optional; a block that makes none gets the full, safe treatment:

* ``draws_random = False``: it never draws random numbers; the engine does not record and compare the
  random state around it. Without the declaration the state is recorded, and a block found to draw keeps
  its input (its inverse need not draw in the forward's order).
* ``self_contained = True``: its output depends on its input, the cond tensors and its own parameters
  only; the engine differentiates with respect to those instead of walking the graph to find what the
  block read (the walk is what catches a block reading some other tensor that requires grad).
* ``static_buffers = True`` (on any module): a recompute does not change this module's own buffers, so
  the engine does not save and restore them (it does for every other module's buffers: running
  statistics of batch norm, say).

``cond`` are tensors every block may read (a measurement, a mask). They are never inverted.

Blocks need not subclass :class:`InvertibleModule`: memcnn's couplings, for example, work unchanged. The
functions :func:`forward_logdet`, :func:`inverse_logdet` and :func:`rebuild` below apply the contract to any
block, filling in what the block does not provide.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "InvertibleModule",
    "accepts_cond",
    "cond_hint",
    "is_invertible",
    "Inverse",
    "check_block",
    "forward_logdet",
    "inverse_logdet",
    "rebuild",
    "draws_random",
    "is_self_contained",
    "mutable_buffers",
    "declare_like",
]


class InvertibleModule(nn.Module):
    """Base class for invertible blocks (optional: any module with ``forward`` and ``inverse`` will do).

    Subclasses implement :meth:`forward` and :meth:`inverse`; those with a tractable Jacobian implement
    :meth:`forward_and_logdet` (and, when cheaper than the default, :meth:`inverse_and_logdet`).
    """

    #: True when the log-determinant of the Jacobian is identically zero.
    volume_preserving: bool = False

    def forward(self, x: Tensor, *cond: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, y: Tensor, *cond: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_and_logdet(self, x: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        """Output and per-sample ``log |det dy/dx|``, shape ``(B,)``."""
        if self.volume_preserving:
            y = self(x, *cond)
            return y, x.new_zeros(x.shape[0])
        raise NotImplementedError(
            f"{type(self).__name__} has no log-determinant: implement forward_and_logdet() "
            "or set volume_preserving = True"
        )

    def inverse_and_logdet(self, y: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        """Input and per-sample ``log |det dx/dy|`` of the inverse map (default: via the forward)."""
        x = self.inverse(y, *cond)
        _, ld = self.forward_and_logdet(x, *cond)
        return x, -ld


class Inverse(InvertibleModule):
    """The block ``block`` with its two directions swapped.

    ``Inverse(b)(y) == b.inverse(y)``. The wrapped module is shared, not copied, so a flow used forward
    and then inverted in the same chain gets the summed gradient of both uses.

    Args:
        block: an invertible block.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        check_block(block)
        if not is_invertible(block):
            raise TypeError(f"Inverse({type(block).__name__}): the block is marked invertible = False")
        self.block = block
        declare_like(self, block)

    def forward(self, x: Tensor, *cond: Tensor) -> Tensor:
        return self.block.inverse(x, *cond)

    def inverse(self, y: Tensor, *cond: Tensor) -> Tensor:
        return self.block(y, *cond)

    def forward_and_logdet(self, x: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        return inverse_logdet(self.block, x, *cond)

    def inverse_and_logdet(self, y: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        return forward_logdet(self.block, y, *cond)

    def rebuild(self, y: Tensor, *cond: Tensor, logdet: bool = False):
        inner = getattr(self.block, "rebuild_inverse", None)
        if inner is None:
            return NotImplemented
        return inner(y, *cond, logdet=logdet)

    def extra_repr(self) -> str:
        return ""


def is_invertible(block: nn.Module) -> bool:
    """False for blocks marked ``invertible = False`` (the engine keeps their input instead)."""
    return bool(getattr(block, "invertible", True))


def draws_random(block: nn.Module) -> bool:
    """False only for blocks that declare ``draws_random = False`` (see the module docstring)."""
    return bool(getattr(block, "draws_random", True))


def is_self_contained(block: nn.Module) -> bool:
    """True for blocks that declare ``self_contained = True`` (see the module docstring)."""
    return bool(getattr(block, "self_contained", False))


def mutable_buffers(block: nn.Module) -> list:
    """The buffers of ``block`` and its submodules that a recompute may change: those of every module that
    does not declare ``static_buffers = True``."""
    out, seen = [], set()
    for m in block.modules():
        if getattr(m, "static_buffers", False):
            continue
        for b in m.buffers(recurse=False):
            if id(b) not in seen:
                seen.add(id(b))
                out.append(b)
    return out


def accepts_cond(block: nn.Module) -> bool:
    """Whether the engine passes the chain's ``cond`` tensors to ``block``: its ``uses_cond`` declaration
    (default ``False``; see the module docstring)."""
    return bool(getattr(block, "uses_cond", False))


def declare_like(wrapper: nn.Module, block: nn.Module) -> None:
    """Give a block that wraps ``block`` (and adds nothing that reads cond, draws random numbers or changes
    the volume) ``block``'s declarations: ``volume_preserving``, ``uses_cond``, ``draws_random``,
    ``self_contained``, so that the engine's plan treats the wrapper as it would treat ``block``."""
    wrapper.volume_preserving = bool(getattr(block, "volume_preserving", False))
    wrapper.uses_cond = accepts_cond(block)
    wrapper.draws_random = draws_random(block)
    wrapper.self_contained = is_self_contained(block)


def cond_hint(block: nn.Module, n_cond: int) -> str:
    """A hint for an error of ``block``: it takes more than one positional argument but does not declare
    ``uses_cond = True`` while the chain has cond tensors (``""`` otherwise)."""
    if not n_cond or hasattr(block, "uses_cond"):
        return ""
    try:
        params = list(inspect.signature(block.forward).parameters.values())
    except (TypeError, ValueError):
        return ""
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) > 1 or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return (" (its forward takes more than the input, but the block does not declare "
                "uses_cond = True, so the engine passed it no cond tensors)")
    return ""


def check_block(block: object, index: Optional[int] = None) -> None:
    """Raise ``TypeError`` unless ``block`` is a module with callable ``forward`` and ``inverse``."""
    where = f"block {index} ({type(block).__name__})" if index is not None else type(block).__name__
    if not isinstance(block, nn.Module):
        raise TypeError(f"{where} is not a torch.nn.Module; invertible blocks must be modules")
    if not is_invertible(block):
        return
    if not callable(getattr(block, "inverse", None)):
        raise TypeError(
            f"{where} has no inverse(y, *cond) method; every block of an invertible chain must be "
            "invertible (wrap it with a coupling, or give it an inverse)"
        )


def forward_logdet(block: nn.Module, x: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
    """``(block(x, *cond), logdet)`` for any block, zero log-determinant if it is volume preserving."""
    fn = getattr(block, "forward_and_logdet", None)
    if fn is not None:
        return fn(x, *cond)
    if getattr(block, "volume_preserving", False):
        return block(x, *cond), x.new_zeros(x.shape[0])
    raise NotImplementedError(
        f"{type(block).__name__} does not provide forward_and_logdet(); the chain cannot return a "
        "log-determinant through it (set volume_preserving = True if it is zero)"
    )


def inverse_logdet(block: nn.Module, y: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
    """``(block.inverse(y, *cond), logdet of the inverse)`` for any block."""
    fn = getattr(block, "inverse_and_logdet", None)
    if fn is not None:
        return fn(y, *cond)
    x = block.inverse(y, *cond)
    if getattr(block, "volume_preserving", False):
        return x, y.new_zeros(y.shape[0])
    _, ld = forward_logdet(block, x, *cond)
    return x, -ld


def _default_rebuild(block: nn.Module, y: Tensor, cond: Tuple[Tensor, ...], logdet: bool, replay=None):
    replay = replay or contextlib.nullcontext
    with torch.no_grad(), replay():
        x = block.inverse(y, *cond)
    x = x.detach().requires_grad_()
    with torch.enable_grad(), replay():
        if logdet:
            y_graph, ld = forward_logdet(block, x, *cond)
        else:
            y_graph, ld = block(x, *cond), None
    return x, y_graph, ld


def rebuild(block: nn.Module, y: Tensor, *cond: Tensor, logdet: bool = False, replay=None):
    """Rebuild a block's input from its output and recompute the block with a graph.

    Uses the block's fused ``rebuild`` where it has one (and does not return ``NotImplemented``), else
    inverse (without graph) then forward (with graph).

    Args:
        block: an invertible block.
        y: the block's output, detached.
        *cond: conditioning tensors.
        logdet: also return the log-determinant with its graph.
        replay: a context-manager factory entered around each pass of the block (the engine uses it to
            replay the random state of the forward pass).

    Returns:
        ``(x, y_graph, logdet_graph)``: ``x`` a leaf that requires grad, ``y_graph = block(x, *cond)`` with
        its graph, and the log-determinant with its graph when ``logdet`` is true (else ``None``).
    """
    fused = getattr(block, "rebuild", None)
    if fused is not None:
        with torch.enable_grad(), (replay or contextlib.nullcontext)():
            out = fused(y, *cond, logdet=logdet)
        if out is not NotImplemented:
            return out
    return _default_rebuild(block, y, cond, logdet, replay)
