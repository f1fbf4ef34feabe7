"""The autograd Function behind :class:`invprox.InvertibleChain`, and its backward pass.

Forward: run the blocks without a graph, keeping the chain's input and output, the cond tensors, the kept
states of the drift policy and of non-invertible blocks, and each block's input shape and (where it drew
random numbers) random state. Backward: per segment between kept states, walk the blocks in reverse; for
each, rebuild its input by inversion (or take the kept one), recompute it with a graph and take its
vector-Jacobian product.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .block import cond_hint, forward_logdet, rebuild
from .errors import BlockError, DriftError, DriftWarning, _recomputing, span
from .plan import Plan
from .state import BlockState, autocast_state


@dataclass
class _Config:
    blocks: Sequence[nn.Module]
    plan: Plan
    params: List[Tensor]
    n_cond: int
    logdet: bool
    keep_every: Optional[int]
    check: Optional[str]
    check_tol: float
    preserve_rng_state: bool
    drift: List[Tuple[int, float]] = field(default_factory=list)
    #: at most this many consecutive blocks share one vector-Jacobian product (1: one per block)
    vjp_blocks: int = 1
    #: set by the backward: whether recomputes must re-enter the forward's autocast state
    replay_autocast: bool = True


def _name(i: int, block: nn.Module) -> str:
    return f"block {i} ({type(block).__name__})"


class _ChainFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cfg: _Config, x: Tensor, *rest: Tensor):
        with span("invprox.forward"):
            return _ChainFunction._forward(ctx, cfg, x, *rest)

    @staticmethod
    def _forward(ctx, cfg: _Config, x: Tensor, *rest: Tensor):
        cond = rest[: cfg.n_cond]
        ctx.cfg = cfg
        plan = cfg.plan
        states: List[BlockState] = []
        kept_idx: List[int] = []
        kept: List[Tensor] = []
        h = x
        ld_total = x.new_zeros(x.shape[0]) if cfg.logdet else None
        autocast = autocast_state()  # one chain call, one autocast state (shared by its blocks' records)
        ctx.autocast = autocast
        amp = any(enabled for _, enabled, _, _ in autocast)
        compiling = torch.compiler.is_compiling()  # torch.compile traces no version counters
        for i, block in enumerate(cfg.blocks):
            h_in = h
            if i > 0 and (not plan.invertible[i] or (cfg.keep_every and i % cfg.keep_every == 0)):
                kept_idx.append(i)
                kept.append(h)
            random = cfg.preserve_rng_state and plan.draws_random[i]
            with span("invprox.state_capture"):
                if random:
                    st = BlockState.capture(h, cond, True, autocast)
                else:
                    st = BlockState(h.shape, None, [], [], autocast)
            cb = cond if plan.uses_cond[i] else ()
            version_in = None if compiling else h._version
            try:
                if cfg.logdet:
                    h, ld = forward_logdet(block, h, *cb)
                    ld_total = ld_total + ld
                else:
                    h = block(h, *cb)
            except BlockError:
                raise
            except Exception as e:
                raise BlockError(f"{_name(i, block)} failed on input of shape {tuple(st.shape)}: {e}"
                                 f"{cond_hint(block, cfg.n_cond)}") from e
            if not isinstance(h, Tensor):
                raise BlockError(f"{_name(i, block)} returned {type(h).__name__}, expected a Tensor")
            if not compiling and h_in._version != version_in:
                raise BlockError(
                    f"{_name(i, block)} modified its input in place; a block must return a new tensor "
                    "(its input may be kept or rebuilt for the backward pass)"
                )
            if amp and plan.invertible[i] and _narrows(h_in, h):
                warnings.warn(
                    f"{_name(i, block)} turned a {h_in.dtype} input into a {h.dtype} output under "
                    "autocast: its inverse cannot rebuild the input exactly, and the states rebuilt "
                    "before it will drift at that precision. Run the block in float32 "
                    "(invprox.core.precision.FullPrecision) or keep its input (keep_every).",
                    DriftWarning,
                    stacklevel=2,
                )
            if random:
                with span("invprox.state_capture"):
                    st.settle(BlockState.capture(h, cond, True, autocast))
            if i > 0 and st.cpu_rng is not None and (not kept_idx or kept_idx[-1] != i):
                # it drew random numbers: an inverse need not draw them in the forward's order (memcnn's
                # two-network couplings with dropout run G before F), so rebuilding its input could be
                # silently wrong; keep the input and recompute the block from it, replaying the state
                kept_idx.append(i)
                kept.append(h_in)
            states.append(st)
        if h is x:
            h = h.clone()
        ctx.states = states
        ctx.kept_idx = kept_idx
        ctx.save_for_backward(x, h, *cond, *kept)
        if cfg.logdet:
            return h, ld_total
        return h

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_ld: Optional[Tensor] = None):
        # autograd runs a backward in grad mode exactly when it was asked for create_graph=True
        if torch.is_grad_enabled():
            raise RuntimeError(
                "InvertibleChain does not support double backward (create_graph=True): its backward "
                "rebuilds activations instead of keeping a graph of them. For gradients of gradients "
                "build the chain with memory_efficient=False."
            )
        with torch.no_grad(), span("invprox.backward"):
            return _ChainFunction._backward(ctx, grad_y, grad_ld)

    @staticmethod
    def _backward(ctx, grad_y: Tensor, grad_ld: Optional[Tensor]):
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

        # recomputes re-enter the forward's autocast state only where the backward runs in another one
        cfg.replay_autocast = autocast_state() != ctx.autocast
        bounds = sorted(kept) + [len(cfg.blocks)]
        h, g = y.detach(), grad_y
        with _recomputing():  # the whole backward recomputes (the drift check's passes too)
            for s, e in reversed(list(zip(bounds[:-1], bounds[1:]))):
                inputs = _check_segment(cfg, ctx.states, s, e, h, kept[s], cond_leaves)
                j = e - 1
                while j >= s:
                    a = _group_start(cfg, ctx.states, s, j, inputs)
                    if a < j:
                        x_leaf, g = _group_vjp(cfg, a, j, ctx.states, inputs.get(a), h, g, grad_ld,
                                               cond_leaves, grad_cond, grad_params, known)
                    else:
                        block, st = cfg.blocks[j], ctx.states[j]
                        # buffers are restored after the vjp: batch norm saves its running stats for
                        # backward
                        with _restore(cfg, j):
                            x_leaf, g = _block_vjp(cfg, j, block, st, inputs.get(j), h, g, grad_ld,
                                                   cond_leaves, known, grad_cond, grad_params)
                    h, j = x_leaf.detach(), a - 1
        grad_x = g if needs[1] else None
        return (None, grad_x, *grad_cond, *grad_params)


def _restore(cfg: _Config, j: int):
    """Save and restore the buffers of block ``j`` that a recompute may change (none: nothing to do)."""
    bufs = cfg.plan.buffers[j]
    return BlockState.restore_buffers(cfg.blocks[j], bufs) if bufs else contextlib.nullcontext()


def _replay(cfg: _Config, st: BlockState):
    """The context that replays block state ``st`` (random state, autocast) where there is any."""
    if st.needs_replay(cfg.replay_autocast):
        return st.replay(cfg.replay_autocast)
    return contextlib.nullcontext()


def _narrows(a: Tensor, b: Tensor) -> bool:
    """``b`` has a floating dtype of lower precision than ``a``'s."""
    if not (a.is_floating_point() and b.is_floating_point()) or a.dtype == b.dtype:
        return False
    return torch.finfo(b.dtype).eps > torch.finfo(a.dtype).eps


def _block_vjp(cfg, j, block, st, x_in, h, g, grad_ld, cond_leaves, known, grad_cond, grad_params):
    """Recompute block ``j`` with a graph (from its kept input ``x_in`` or by rebuilding it from its
    output ``h``), check it, accumulate the cond and parameter gradients; return ``(x_leaf, grad_x)``."""
    want_ld = grad_ld is not None
    if not cfg.plan.uses_cond[j]:
        cond_leaves = ()
    if x_in is not None:
        x_leaf = x_in.detach().requires_grad_()
        with torch.enable_grad(), _replay(cfg, st):
            if want_ld:
                y_graph, ld_graph = forward_logdet(block, x_leaf, *cond_leaves)
            else:
                y_graph, ld_graph = block(x_leaf, *cond_leaves), None
    else:
        x_leaf, y_graph, ld_graph = _rebuild_block(cfg, j, block, st, h, cond_leaves, want_ld)
    _check_shape(j, block, x_leaf, st.shape)
    outs, gouts = _outputs(y_graph, ld_graph, g, grad_ld)
    if cfg.plan.self_contained[j]:  # declared: its own parameters and cond are all it reads
        leaves = [p for p in cfg.plan.block_params[j] if p.requires_grad]
        leaves += [c for c in cond_leaves if c.requires_grad]
    else:
        with span("invprox.graph_leaves"):
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
    return _take_vjp(x_leaf, outs, gouts, leaves, known, grad_cond, grad_params)


def _check_shape(j: int, block: nn.Module, x: Tensor, shape) -> None:
    """Name the block whose inverse rebuilt an input of another shape than the forward's."""
    if x.shape != shape:
        raise BlockError(f"{_name(j, block)}: inverse returned shape {tuple(x.shape)}, but the block's "
                         f"input had shape {tuple(shape)}")


def _outputs(y: Tensor, ld: Optional[Tensor], g: Tensor, grad_ld: Optional[Tensor]):
    """The recomputed outputs to differentiate, with their gradients (the log-det where it has a graph)."""
    outs, gouts = [y], [g]
    if ld is not None and ld.requires_grad:
        outs.append(ld)
        gouts.append(grad_ld)
    return outs, gouts


def _take_vjp(x_leaf, outs, gouts, leaves, known, grad_cond, grad_params):
    """One ``torch.autograd.grad`` of ``outs`` for ``x_leaf`` and ``leaves`` (parameters and cond of the
    chain, found in ``known``), the latter accumulated into ``grad_cond`` / ``grad_params``; returns
    ``(x_leaf, grad_x)``."""
    targets = [x_leaf] + [t for t in leaves if t is not x_leaf]
    if not any(o.requires_grad for o in outs):
        return x_leaf, torch.zeros_like(x_leaf)
    with torch.enable_grad(), span("invprox.vjp"):
        grads = torch.autograd.grad(outs, targets, gouts, allow_unused=True)
    for t, gt in zip(targets[1:], grads[1:]):
        if gt is None:
            continue
        kind, k = known[id(t)]
        acc = grad_cond if kind == "cond" else grad_params
        acc[k] = gt if acc[k] is None else acc[k] + gt
    return x_leaf, (grads[0] if grads[0] is not None else torch.zeros_like(x_leaf))


def _group_start(cfg: _Config, states, s: int, j: int, inputs: Dict[int, Tensor]) -> int:
    """The first block of the group that ends at block ``j``: up to ``cfg.vjp_blocks`` blocks of segment
    ``[s, j]`` in a row that need no bookkeeping (invertible, self-contained, no buffers to restore, no
    random or autocast state to replay); a block whose input is known starts its group."""
    plan, k = cfg.plan, j
    while cfg.vjp_blocks > 1:
        if not (plan.invertible[k] and plan.self_contained[k] and not plan.buffers[k]
                and not states[k].needs_replay(cfg.replay_autocast)):
            return k + 1 if k < j else j
        if k in inputs or k == s or j - k + 1 >= cfg.vjp_blocks:
            return k
        k -= 1
    return j


def _group_vjp(cfg, a, j, states, x_in, h, g, grad_ld, cond_leaves, grad_cond, grad_params, known):
    """One vector-Jacobian product for blocks ``[a, j]``: their input rebuilt by inverting them from ``h``
    (or taken as ``x_in``), then recomputed with one graph (activation memory: these blocks); returns
    ``(x_leaf, grad_x)``."""
    uses = cfg.plan.uses_cond
    if x_in is None:
        x_in = h
        for k in range(j, a - 1, -1):
            block = cfg.blocks[k]
            try:
                x_in = block.inverse(x_in, *(cond_leaves if uses[k] else ()))
            except Exception as e:
                raise BlockError(f"{_name(k, block)} failed to invert its output: {e}") from e
            _check_shape(k, block, x_in, states[k].shape)
    x_leaf = x_in.detach().requires_grad_()
    y, ld = x_leaf, None
    with torch.enable_grad():
        for k in range(a, j + 1):
            cb = cond_leaves if uses[k] else ()
            if grad_ld is not None:
                y, ld_k = forward_logdet(cfg.blocks[k], y, *cb)
                ld = ld_k if ld is None else ld + ld_k
            else:
                y = cfg.blocks[k](y, *cb)
    seen, leaves = set(), []
    for k in range(a, j + 1):
        for t in [*cfg.plan.block_params[k], *(cond_leaves if uses[k] else ())]:
            if t.requires_grad and id(t) not in seen:
                seen.add(id(t))
                leaves.append(t)
    outs, gouts = _outputs(y, ld, g, grad_ld)
    return _take_vjp(x_leaf, outs, gouts, leaves, known, grad_cond, grad_params)


def _rebuild_block(cfg, j, block, st, h, cond_leaves, want_ld):
    replay = functools.partial(_replay, cfg, st) if st.needs_replay(cfg.replay_autocast) else None
    try:
        with span("invprox.rebuild"):
            return rebuild(block, h, *cond_leaves, logdet=want_ld, replay=replay)
    except BlockError:
        raise
    except Exception as e:
        raise BlockError(f"{_name(j, block)} failed to rebuild its input: {e}") from e


def _invert_segment(cfg: _Config, states, s: int, e: int, h: Tensor, cond) -> Tensor:
    """``h`` inverted through blocks ``[s, e)``; like :func:`_check_segment`, called only inside the
    backward's ``_recomputing()`` (layers skip data initialisation and statistics updates there)."""
    with torch.no_grad():
        for j in range(e - 1, s - 1, -1):
            block, st = cfg.blocks[j], states[j]
            cb = cond if cfg.plan.uses_cond[j] else ()
            with _restore(cfg, j), _replay(cfg, st):
                h = block.inverse(h, *cb)
    return h


def _check_segment(cfg: _Config, states, s, e, h, x_kept, cond) -> Dict[int, Tensor]:
    """Inputs of the blocks in ``[s, e)`` that the backward takes as kept rather than rebuilt."""
    inputs = {s: x_kept}
    if cfg.check is None or e - s < 2:
        return inputs
    x_rebuilt = _invert_segment(cfg, states, s + 1, e, h, cond)
    # the reference forward is a recompute too: no batch-norm statistics update, no data init
    with torch.no_grad(), _restore(cfg, s), _replay(cfg, states[s]):
        x_ref = cfg.blocks[s](x_kept, *(cond if cfg.plan.uses_cond[s] else ()))
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
            with _restore(cfg, j), _replay(cfg, states[j]):
                hh = cfg.blocks[j](hh, *(cond if cfg.plan.uses_cond[j] else ()))
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
