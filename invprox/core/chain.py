"""Backpropagation through a chain of invertible blocks without storing activations.

The chain runs its blocks in one :class:`torch.autograd.Function`. The forward pass keeps no graph: it keeps
the chain's input and output, the conditioning tensors, and (by the drift policy) the input of every
``keep_every``-th block. The backward pass walks the blocks in reverse; for each it rebuilds the block's
input from its output by inversion (or takes the kept state), recomputes that one block with a graph, and
takes its vector-Jacobian product. Activation memory is that of one block, whatever the depth.

Parameters of the blocks are inputs of the Function, so ``torch.autograd.grad``, ``backward(inputs=...)``,
DDP's hooks and optimizers see ordinary gradients; a parameter used by several blocks gets the sum.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .block import InvertibleModule, accepts_cond, check_block, forward_logdet, is_invertible, rebuild
from .state import BlockState

__all__ = ["InvertibleChain", "DriftError", "DriftWarning", "BlockError", "is_recomputing"]

_CHECK_ACTIONS = (None, "warn", "raise", "fallback")
_local = threading.local()


def is_recomputing() -> bool:
    """True while the engine recomputes a block in its backward pass.

    Layers with side effects in ``forward`` (data-dependent initialisation, running statistics) may use it
    to skip them; the engine also restores every block's buffers after its recompute.
    """
    return getattr(_local, "depth", 0) > 0


@contextlib.contextmanager
def _recomputing():
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


class DriftError(RuntimeError):
    """A rebuilt state differs from the kept one by more than the chain's tolerance."""


class DriftWarning(UserWarning):
    """Warned when a rebuilt state drifts from the kept one and the chain's check is ``"warn"``."""


class BlockError(RuntimeError):
    """A block of the chain failed or broke the block contract; the message names the block."""


@dataclass
class _Config:
    blocks: Sequence[nn.Module]
    uses_cond: Sequence[bool]
    invertible: Sequence[bool]
    params: List[Tensor]
    n_cond: int
    logdet: bool
    keep_every: Optional[int]
    check: Optional[str]
    check_tol: float
    preserve_rng_state: bool
    drift: List[Tuple[int, float]] = field(default_factory=list)


def _name(i: int, block: nn.Module) -> str:
    return f"block {i} ({type(block).__name__})"


class _ChainFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cfg: _Config, x: Tensor, *rest: Tensor):
        cond = rest[: cfg.n_cond]
        ctx.cfg = cfg
        states: List[BlockState] = []
        kept_idx: List[int] = []
        kept: List[Tensor] = []
        h = x
        ld_total = x.new_zeros(x.shape[0]) if cfg.logdet else None
        version = x._version
        st = BlockState.capture(x, cond, cfg.preserve_rng_state)
        for i, block in enumerate(cfg.blocks):
            if i > 0 and (not cfg.invertible[i] or (cfg.keep_every and i % cfg.keep_every == 0)):
                kept_idx.append(i)
                kept.append(h)
            cb = cond if cfg.uses_cond[i] else ()
            try:
                if cfg.logdet:
                    h, ld = forward_logdet(block, h, *cb)
                    ld_total = ld_total + ld
                else:
                    h = block(h, *cb)
            except BlockError:
                raise
            except Exception as e:
                raise BlockError(f"{_name(i, block)} failed on input of shape {tuple(st.shape)}: {e}") from e
            if not isinstance(h, Tensor):
                raise BlockError(f"{_name(i, block)} returned {type(h).__name__}, expected a Tensor")
            nxt = BlockState.capture(h, cond, cfg.preserve_rng_state)
            st.settle(nxt)
            states.append(st)
            st = nxt
        if x._version != version:
            raise BlockError(
                "a block modified the chain's input in place; blocks must return new tensors"
            )
        if h is x:
            h = h.clone()
        ctx.states = states
        ctx.kept_idx = kept_idx
        ctx.save_for_backward(x, h, *cond, *kept)
        if cfg.logdet:
            return h, ld_total
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor, grad_ld: Optional[Tensor] = None):
        cfg: _Config = ctx.cfg
        saved = ctx.saved_tensors
        x0, y = saved[0], saved[1]
        cond = saved[2 : 2 + cfg.n_cond]
        kept: Dict[int, Tensor] = {0: x0}
        kept.update(zip(ctx.kept_idx, saved[2 + cfg.n_cond :]))
        needs = ctx.needs_input_grad  # (cfg, x, *cond, *params)
        cond_leaves = tuple(
            c.detach().requires_grad_(bool(needs[2 + j])) for j, c in enumerate(cond)
        )
        known = {id(t): ("cond", j) for j, t in enumerate(cond_leaves) if t.requires_grad}
        known.update({id(p): ("param", j) for j, p in enumerate(cfg.params)})
        grad_cond: List[Optional[Tensor]] = [None] * cfg.n_cond
        grad_params: List[Optional[Tensor]] = [None] * len(cfg.params)
        if not cfg.logdet:
            grad_ld = None

        bounds = sorted(kept) + [len(cfg.blocks)]
        h, g = y.detach(), grad_y
        for s, e in reversed(list(zip(bounds[:-1], bounds[1:]))):
            inputs = _check_segment(cfg, ctx.states, s, e, h, kept[s], cond_leaves)
            for j in range(e - 1, s - 1, -1):
                block, st = cfg.blocks[j], ctx.states[j]
                # buffers are restored after the vjp: batch norm saves its running stats for backward
                with _recomputing(), st.restore_buffers(block):
                    x_leaf, g = _block_vjp(cfg, j, block, st, inputs.get(j), h, g, grad_ld,
                                           cond_leaves, known, grad_cond, grad_params)
                h = x_leaf.detach()
        grad_x = g if needs[1] else None
        return (None, grad_x, *grad_cond, *grad_params)


def _block_vjp(cfg, j, block, st, x_in, h, g, grad_ld, cond_leaves, known, grad_cond, grad_params):
    """Recompute block ``j`` with a graph (from its kept input ``x_in`` or by rebuilding it from its
    output ``h``), check it, accumulate the cond and parameter gradients; return ``(x_leaf, grad_x)``."""
    want_ld = grad_ld is not None
    if not cfg.uses_cond[j]:
        cond_leaves = ()
    if x_in is not None:
        x_leaf = x_in.detach().requires_grad_()
        with torch.enable_grad(), st.replay():
            if want_ld:
                y_graph, ld_graph = forward_logdet(block, x_leaf, *cond_leaves)
            else:
                y_graph, ld_graph = block(x_leaf, *cond_leaves), None
    else:
        x_leaf, y_graph, ld_graph = _rebuild_block(j, block, st, h, cond_leaves, want_ld)
    if x_leaf.shape != st.shape:
        raise BlockError(
            f"{_name(j, block)}: inverse returned shape {tuple(x_leaf.shape)}, but the "
            f"block's input had shape {tuple(st.shape)}"
        )
    outs, gouts = [y_graph], [g]
    if ld_graph is not None and ld_graph.requires_grad:
        outs.append(ld_graph)
        gouts.append(grad_ld)
    leaves = _graph_leaves(outs)
    extra = [t for t in leaves if id(t) not in known and t is not x_leaf]
    if extra:
        shapes = ", ".join(str(tuple(t.shape)) for t in extra)
        raise BlockError(
            f"{_name(j, block)} uses tensor(s) of shape {shapes} that require grad but are "
            "neither its parameters nor conditioning inputs of the chain; their gradients "
            "would be lost. Pass them as cond: chain(x, *cond), or register them in a module "
            "of the chain."
        )
    targets = [x_leaf] + [t for t in leaves if t is not x_leaf]
    if not any(o.requires_grad for o in outs):
        return x_leaf, torch.zeros_like(x_leaf)
    with torch.enable_grad():
        grads = torch.autograd.grad(outs, targets, gouts, allow_unused=True)
    for t, gt in zip(targets[1:], grads[1:]):
        if gt is None:
            continue
        kind, k = known[id(t)]
        acc = grad_cond if kind == "cond" else grad_params
        acc[k] = gt if acc[k] is None else acc[k] + gt
    return x_leaf, (grads[0] if grads[0] is not None else torch.zeros_like(x_leaf))


def _rebuild_block(j, block, st, h, cond_leaves, want_ld):
    try:
        return rebuild(block, h, *cond_leaves, logdet=want_ld, replay=st.replay)
    except BlockError:
        raise
    except Exception as e:
        raise BlockError(f"{_name(j, block)} failed to rebuild its input: {e}") from e


def _invert_segment(cfg: _Config, states, s: int, e: int, h: Tensor, cond) -> Tensor:
    with torch.no_grad():
        for j in range(e - 1, s - 1, -1):
            block, st = cfg.blocks[j], states[j]
            cb = cond if cfg.uses_cond[j] else ()
            with _recomputing(), st.restore_buffers(block), st.replay():
                h = block.inverse(h, *cb)
    return h


def _check_segment(cfg: _Config, states, s, e, h, x_kept, cond) -> Dict[int, Tensor]:
    """Inputs of the blocks in ``[s, e)`` that the backward takes as kept rather than rebuilt."""
    inputs = {s: x_kept}
    if cfg.check is None or e - s < 2:
        return inputs
    x_rebuilt = _invert_segment(cfg, states, s + 1, e, h, cond)
    with torch.no_grad(), states[s].replay():
        x_ref = cfg.blocks[s](x_kept, *(cond if cfg.uses_cond[s] else ()))
    err = float((x_rebuilt - x_ref).norm() / x_ref.norm().clamp_min(1e-30))
    cfg.drift.append((s + 1, err))
    if not (err > cfg.check_tol):  # also catches NaN
        return inputs
    msg = (
        f"state rebuilt by inversion at block {s + 1} differs from the recomputed one by {err:.3g} "
        f"(relative; tolerance {cfg.check_tol:.3g}). Keep states more often (keep_every) or use a "
        "better-conditioned block."
    )
    if cfg.check == "raise":
        raise DriftError(msg)
    if cfg.check == "warn":
        warnings.warn(msg, DriftWarning, stacklevel=2)
        return inputs
    # fallback: recompute the segment's states forward from the kept one
    with torch.no_grad():
        hh = x_kept
        for j in range(s, e - 1):
            with _recomputing(), states[j].restore_buffers(cfg.blocks[j]), states[j].replay():
                hh = cfg.blocks[j](hh, *(cond if cfg.uses_cond[j] else ()))
            inputs[j + 1] = hh
    return inputs


def _graph_leaves(outs: Sequence[Tensor]) -> List[Tensor]:
    """Leaf tensors requiring grad that ``outs`` depend on (one entry per tensor)."""
    leaves: Dict[int, Tensor] = {}
    seen = set()
    stack = []
    for o in outs:
        if o.grad_fn is not None:
            stack.append(o.grad_fn)
        elif o.requires_grad:
            leaves[id(o)] = o
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if var is not None:
            leaves[id(var)] = var
            continue
        for nxt, _ in fn.next_functions:
            if nxt is not None:
                stack.append(nxt)
    return list(leaves.values())


class InvertibleChain(InvertibleModule):
    """A chain of invertible blocks trained with activation memory one block deep.

    ``chain(x, *cond) == blocks[-1](... blocks[0](x, *cond) ..., *cond)``, and its backward pass gives the
    gradients of standard autograd for ``x``, every ``cond`` tensor and every parameter, while storing only
    the chain's input and output (plus the kept states of the drift policy).

    Args:
        blocks: invertible blocks (modules with ``forward(x, *cond)`` and ``inverse(y, *cond)``). A block may
            appear several times; its parameters then get the summed gradient.
        keep_every: keep the input of every ``n``-th block in the forward pass, so that the backward
            restarts from an exact state every ``n`` blocks. ``None``: pure inversion (keeps nothing);
            ``1``: classic checkpointing (keeps every input, inverts nothing).
        check: compare states rebuilt by inversion with the kept ones at every kept state: ``"warn"``
            (a :class:`DriftWarning`), ``"raise"`` (a :class:`DriftError`), ``"fallback"`` (recompute the
            segment forward from the kept state instead of inverting) or ``None`` (no check; cheapest).
            Costs one extra inversion of the chain. Measured errors are in :attr:`last_drift`.
        check_tol: relative tolerance of the check.
        preserve_rng_state: replay each block's random state in the backward (dropout), as
            ``torch.utils.checkpoint`` does.
        memory_efficient: ``False`` runs the blocks under standard autograd (for comparison).
        check_finite: raise ``ValueError`` when ``x`` or a ``cond`` tensor holds NaN or Inf.

    Shapes:
        x: any shape whose first dimension is the batch, ``(B, ...)``. The log-determinant is ``(B,)``.

    Example:
        >>> import torch, invprox
        >>> from invprox.flows import AffineCoupling
        >>> chain = invprox.InvertibleChain([AffineCoupling(4, hidden=8) for _ in range(3)])
        >>> x = torch.randn(2, 4, 5, 5, requires_grad=True)
        >>> chain(x).square().sum().backward()
        >>> x.grad.shape
        torch.Size([2, 4, 5, 5])
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        keep_every: Optional[int] = None,
        check: Optional[str] = None,
        check_tol: float = 1e-4,
        preserve_rng_state: bool = True,
        memory_efficient: bool = True,
        check_finite: bool = True,
    ):
        super().__init__()
        blocks = list(blocks)
        if not blocks:
            raise ValueError("InvertibleChain needs at least one block")
        for i, b in enumerate(blocks):
            check_block(b, i)
        if keep_every is not None and (not isinstance(keep_every, int) or keep_every < 1):
            raise ValueError(f"keep_every must be a positive int or None, got {keep_every!r}")
        if check not in _CHECK_ACTIONS:
            raise ValueError(f"check must be one of {_CHECK_ACTIONS}, got {check!r}")
        if check is not None and keep_every is None:
            raise ValueError("check needs kept states to compare with: set keep_every as well")
        if not check_tol > 0:
            raise ValueError(f"check_tol must be positive, got {check_tol!r}")
        self.blocks = nn.ModuleList(blocks)
        self.keep_every = keep_every
        self.check = check
        self.check_tol = float(check_tol)
        self.preserve_rng_state = preserve_rng_state
        self.memory_efficient = memory_efficient
        self.check_finite = check_finite
        #: ``[(block index, relative error), ...]`` measured by the drift check in the last backward.
        self.last_drift: List[Tuple[int, float]] = []

    def __len__(self) -> int:
        return len(self.blocks)

    def _validate(self, x: Tensor, cond: Tuple[Tensor, ...]) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
        if x.dim() == 0:
            raise ValueError("x must have a batch dimension, got a 0-d tensor")
        for j, c in enumerate(cond):
            if not isinstance(c, Tensor):
                raise TypeError(f"cond[{j}] must be a Tensor, got {type(c).__name__}")
        if self.check_finite:
            if x.is_floating_point() and not torch.isfinite(x).all():
                raise ValueError("input x contains NaN or Inf")
            for j, c in enumerate(cond):
                if c.is_floating_point() and not torch.isfinite(c).all():
                    raise ValueError(f"cond[{j}] contains NaN or Inf")

    def _run(self, x: Tensor, cond: Tuple[Tensor, ...], logdet: bool):
        self._validate(x, cond)
        params = [p for p in _unique_params(self) if p.requires_grad]
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or any(c.requires_grad for c in cond) or bool(params)
        )
        if not self.memory_efficient or not needs_grad:
            return self._plain(x, cond, logdet)
        blocks = list(self.blocks)
        cfg = _Config(
            blocks=blocks, uses_cond=self._flags(blocks, accepts_cond),
            invertible=self._flags(blocks, is_invertible), params=params, n_cond=len(cond), logdet=logdet,
            keep_every=self.keep_every, check=self.check, check_tol=self.check_tol,
            preserve_rng_state=self.preserve_rng_state, drift=[],
        )
        self.last_drift = cfg.drift
        return _ChainFunction.apply(cfg, x, *cond, *params)

    def _flags(self, blocks, fn) -> List[bool]:
        key = (fn.__name__, tuple(id(b) for b in blocks))
        cache = self.__dict__.setdefault("_flag_cache", {})
        if key not in cache:
            if len(cache) > 8:
                cache.clear()
            cache[key] = [fn(b) for b in blocks]
        return cache[key]

    def _plain(self, x, cond, logdet):
        h = x
        ld = x.new_zeros(x.shape[0]) if logdet else None
        uses = self._flags(list(self.blocks), accepts_cond)
        for i, b in enumerate(self.blocks):
            cb = cond if uses[i] else ()
            try:
                if logdet:
                    h, l_i = forward_logdet(b, h, *cb)
                    ld = ld + l_i
                else:
                    h = b(h, *cb)
            except Exception as e:
                raise BlockError(f"{_name(i, b)} failed on input of shape {tuple(h.shape)}: {e}") from e
        return (h, ld) if logdet else h

    def forward(self, x: Tensor, *cond: Tensor, return_logdet: bool = False):
        """Run the chain. Returns ``y``, or ``(y, logdet)`` with ``logdet`` of shape ``(B,)``."""
        return self._run(x, cond, return_logdet)

    def forward_and_logdet(self, x: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        return self._run(x, cond, True)

    def inverse(self, y: Tensor, *cond: Tensor) -> Tensor:
        """Invert the chain (memory-efficient too: the inverse is itself run as a chain)."""
        return self.inverse_chain()(y, *cond)

    def inverse_and_logdet(self, y: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        return self.inverse_chain().forward_and_logdet(y, *cond)

    def inverse_chain(self) -> InvertibleChain:
        """The chain of the inverse blocks in reverse order, sharing parameters with this one."""
        from .block import Inverse

        inv = InvertibleChain(
            [Inverse(b) for b in reversed(self.blocks)], keep_every=self.keep_every, check=self.check,
            check_tol=self.check_tol, preserve_rng_state=self.preserve_rng_state,
            memory_efficient=self.memory_efficient, check_finite=self.check_finite,
        )
        return inv


def _unique_params(module: nn.Module) -> List[Tensor]:
    seen, out = set(), []
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
