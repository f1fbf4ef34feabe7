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

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks

from .block import InvertibleModule, accepts_cond, check_block, cond_hint, forward_logdet
from .errors import BlockError, DriftError, DriftWarning, is_recomputing
from .function import _ChainFunction, _Config, _name
from .plan import Plan, make_plan

__all__ = ["InvertibleChain", "ChainOwner", "DriftError", "DriftWarning", "BlockError", "is_recomputing"]

_CHECK_ACTIONS = (None, "warn", "raise", "fallback")


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
            Costs one extra inversion of the chain. Measured errors are in :attr:`last_drift`. It
            measures the drift of states, which bounds the gradient's error only loosely: in a 16-fold
            solver a state drift of 2e-6 came with a gradient error of 1.2e-4 (``benchmarks/SOLVER_K.md``).
        check_tol: relative tolerance of the check.
        preserve_rng_state: replay each block's random state in the backward (dropout), as
            ``torch.utils.checkpoint`` does. A block that draws random numbers also keeps its input
            (one state per such block): its inverse need not draw them in the forward's order, so a
            rebuilt input could be wrong; it is recomputed from the kept input instead.
        memory_efficient: ``False`` runs the blocks under standard autograd (for comparison).
        check_finite: raise ``ValueError`` when ``x`` or a ``cond`` tensor holds NaN or Inf.
        vjp_blocks: in the backward, up to this many consecutive blocks that need no bookkeeping
            (invertible, declared self-contained, no buffers to restore, no random state) are inverted,
            recomputed with one graph and share one ``torch.autograd.grad`` call; activation memory is
            then that many blocks deep. ``1`` (the default): one block at a time, with its fused
            rebuild where it has one. Larger values pay where blocks are tiny and Python's cost per
            call dominates (``benchmarks/ENGINE.md``), not where a fused rebuild saves a network pass.

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
        vjp_blocks: int = 1,
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
        if isinstance(vjp_blocks, bool) or not isinstance(vjp_blocks, int) or vjp_blocks < 1:
            raise ValueError(f"vjp_blocks must be a positive int, got {vjp_blocks!r}")
        self.vjp_blocks = vjp_blocks
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

    @property
    def uses_cond(self) -> bool:
        """A chain placed in another chain takes the cond tensors when one of its blocks does."""
        return any(accepts_cond(b) for b in self.blocks)

    def _validate(self, x: Tensor, cond: Tuple[Tensor, ...]) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
        if x.dim() == 0:
            raise ValueError("x must have a batch dimension, got a 0-d tensor")
        for j, c in enumerate(cond):
            if not isinstance(c, Tensor):
                raise TypeError(f"cond[{j}] must be a Tensor, got {type(c).__name__}")
        # the check reads the data, which would split a torch.compile graph: skipped while compiling
        if self.check_finite and not torch.compiler.is_compiling():
            if x.is_floating_point() and not torch.isfinite(x).all():
                raise ValueError("input x contains NaN or Inf")
            for j, c in enumerate(cond):
                if c.is_floating_point() and not torch.isfinite(c).all():
                    raise ValueError(f"cond[{j}] contains NaN or Inf")

    def _run(self, x: Tensor, cond: Tuple[Tensor, ...], logdet: bool):
        self._validate(x, cond)
        plan = self.plan()
        params = [p for p in plan.params if p.requires_grad]
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or any(c.requires_grad for c in cond) or bool(params)
        )
        if not self.memory_efficient or not needs_grad:
            return self._plain(x, cond, logdet, plan)
        cfg = _Config(
            blocks=list(self.blocks), plan=plan, params=params, n_cond=len(cond), logdet=logdet,
            keep_every=self.keep_every, check=self.check, check_tol=self.check_tol,
            preserve_rng_state=self.preserve_rng_state, drift=[], vjp_blocks=self.vjp_blocks,
        )
        self.last_drift = cfg.drift
        return _apply(cfg, x, *cond, *params)

    def plan(self) -> Plan:
        """The engine's plan of this chain (:mod:`invprox.core.plan`): made once, and again only when the
        blocks or their parameters change.

        The chain's parameters are listed again only after a parameter, buffer or submodule was registered on
        any module (``module.weight = nn.Parameter(...)``; PyTorch's global registration hooks count them),
        so a call usually costs a tuple of the blocks' ids, not a walk over every parameter of the chain
        (which was a tenth of a training step of a chain of 64 small couplings).
        """
        blocks, count = tuple(id(b) for b in self.blocks), _registrations[0]
        cached = self.__dict__.get("_plan_cache")  # (block ids, registrations, parameter ids, plan)
        if cached is not None and cached[0] == blocks and cached[1] == count:
            return cached[3]
        params = _unique_params(self)  # something was registered somewhere: did this chain change?
        ids = tuple(id(p) for p in params)
        if cached is None or cached[0] != blocks or cached[2] != ids:
            cached = (blocks, count, ids, make_plan(list(self.blocks), params))
        else:
            cached = (blocks, count, ids, cached[3])
        self.__dict__["_plan_cache"] = cached
        return cached[3]

    def _plain(self, x, cond, logdet, plan: Plan):
        h = x
        ld = x.new_zeros(x.shape[0]) if logdet else None
        uses = plan.uses_cond
        for i, b in enumerate(self.blocks):
            cb = cond if uses[i] else ()
            try:
                if logdet:
                    h, l_i = forward_logdet(b, h, *cb)
                    ld = ld + l_i
                else:
                    h = b(h, *cb)
            except Exception as e:
                raise BlockError(f"{_name(i, b)} failed on input of shape {tuple(h.shape)}: {e}"
                                 f"{cond_hint(b, len(cond))}") from e
        return (h, ld) if logdet else h

    def forward(self, x: Tensor, *cond: Tensor) -> Tensor:
        """Run the chain; :meth:`forward_and_logdet` also returns the log-determinant, shape ``(B,)``."""
        return self._run(x, cond, False)

    def forward_and_logdet(self, x: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        return self._run(x, cond, True)

    def inverse(self, y: Tensor, *cond: Tensor) -> Tensor:
        """Invert the chain (memory-efficient too: the inverse is itself run as a chain)."""
        return self.inverse_chain()(y, *cond)

    def inverse_and_logdet(self, y: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        return self.inverse_chain().forward_and_logdet(y, *cond)

    def inverse_chain(self) -> InvertibleChain:
        """The chain of the inverse blocks in reverse order, sharing parameters with this one.

        Built once and reused while the blocks and the policy stay the same (it is not a submodule: its
        parameters are this chain's own).
        """
        from .block import Inverse

        key = (tuple(id(b) for b in self.blocks), self.keep_every, self.check, self.check_tol,
               self.preserve_rng_state, self.memory_efficient, self.check_finite, self.vjp_blocks)
        cached = self.__dict__.get("_inverse_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        inv = InvertibleChain(
            [Inverse(b) for b in reversed(self.blocks)], keep_every=self.keep_every, check=self.check,
            check_tol=self.check_tol, preserve_rng_state=self.preserve_rng_state,
            memory_efficient=self.memory_efficient, check_finite=self.check_finite,
            vjp_blocks=self.vjp_blocks,
        )
        self.__dict__["_inverse_cache"] = (key, inv)
        return inv


@torch.compiler.disable
def _apply(cfg: _Config, x: Tensor, *rest: Tensor):
    """The engine's Function, run eagerly under ``torch.compile``: its backward rebuilds activations with
    ``torch.autograd.grad`` per block, which cannot be traced, so a compiled model runs the chain as one
    eager call between its compiled graphs (the rest of the model compiles as usual)."""
    return _ChainFunction.apply(cfg, x, *rest)


#: how many parameters, buffers and submodules have been registered on any module (process-wide): plans
#: made before a registration are made again
_registrations = [0]


def _count_registration(*args) -> None:
    _registrations[0] += 1


for _register in (module_hooks.register_module_parameter_registration_hook,
                  module_hooks.register_module_buffer_registration_hook,
                  module_hooks.register_module_module_registration_hook):
    _register(_count_registration)


def _unique_params(module: nn.Module) -> List[Tensor]:
    seen, out = set(), []
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


class ChainOwner:
    """Mixin of a module whose computation is one :class:`InvertibleChain` held as ``self.chain``.

    ``memory_efficient`` reads and sets the chain's: ``True`` trains through the engine, ``False`` runs the
    same blocks under standard autograd. A subclass that records the setting elsewhere (a config) overrides
    :meth:`_set_memory_efficient`.
    """

    chain: InvertibleChain

    @property
    def memory_efficient(self) -> bool:
        """Whether gradients go through the engine (``True``) or standard autograd; settable."""
        return self.chain.memory_efficient

    @memory_efficient.setter
    def memory_efficient(self, value: bool) -> None:
        self._set_memory_efficient(bool(value))

    def _set_memory_efficient(self, value: bool) -> None:
        self.chain.memory_efficient = value
