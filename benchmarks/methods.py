"""The training methods the benchmarks compare, in one place: standard autograd, ``torch.utils.checkpoint``
per block (or per group of blocks), memcnn's ``InvertibleModuleWrapper`` per block, and the invprox engine.

Every adapter takes a list of engine blocks (``forward(x, *cond)``, ``inverse(y, *cond)``) and runs them in
order; the benchmarks (``engine_depth.py``: a chain of couplings; ``solver_k.py``: the blocks of an unrolled
solver) build their models from these.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from invprox.core.block import accepts_cond

from _common import storage_key

__all__ = ["import_memcnn", "BindCond", "MemcnnSequential", "CheckpointSequential", "memcnn_sequential",
           "CheckpointFolds"]


def import_memcnn():
    """memcnn, or ``None`` where it is not installed (its own warnings silenced)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import memcnn
    except ImportError:
        return None
    return memcnn


class BindCond(nn.Module):
    """A block that takes cond tensors, as a one-input block with them held in ``self.cond`` (memcnn's
    wrappers pass one tensor)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.cond: Tuple[Tensor, ...] = ()

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x, *self.cond)

    def inverse(self, y: Tensor) -> Tensor:
        return self.block.inverse(y, *self.cond)


class MemcnnSequential(nn.Module):
    """memcnn wrappers (``keep_input=False``) in sequence, fed a copy of the input.

    memcnn 1.5.2 sets ``.grad`` of each wrapper's input in its backward besides returning the gradient, so a
    leaf input's ``.grad`` would come out doubled; it also frees the input's storage. A copy (which memcnn
    frees at once) keeps the caller's input and its gradient intact. Blocks flagged in ``uses_cond`` get the
    cond tensors of each call through :class:`BindCond`.
    """

    def __init__(self, blocks: Sequence[nn.Module], memcnn, uses_cond: Optional[Sequence[bool]] = None):
        super().__init__()
        self.bound: List[BindCond] = []
        wrapped = []
        for i, b in enumerate(blocks):
            if uses_cond is not None and uses_cond[i]:
                b = BindCond(b)
                self.bound.append(b)
            wrapped.append(memcnn.InvertibleModuleWrapper(fn=b, keep_input=False, keep_input_inverse=False))
        self.wrappers = nn.ModuleList(wrapped)

    def forward(self, x: Tensor, *cond: Tensor) -> Tensor:
        for b in self.bound:
            b.cond = cond
        h = x.clone()
        for w in self.wrappers:
            h = w(h)
        return h


def memcnn_sequential(blocks: Sequence[nn.Module], uses_cond: Optional[Sequence[bool]] = None
                      ) -> MemcnnSequential:
    """:class:`MemcnnSequential` of ``blocks``; ``RuntimeError`` where memcnn is not installed."""
    memcnn = import_memcnn()
    if memcnn is None:
        raise RuntimeError("memcnn is not installed (pip install --no-deps memcnn)")
    return MemcnnSequential(blocks, memcnn, uses_cond)


class CheckpointSequential(nn.Module):
    """The blocks with ``torch.utils.checkpoint`` (non-reentrant) around each block."""

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for b in self.blocks:
            x = checkpoint(b, x, use_reentrant=False)
        return x


class CheckpointFolds(nn.Module):
    """The solver's blocks, one ``torch.utils.checkpoint`` (non-reentrant) per fold."""

    def __init__(self, solver: nn.Module):  # a FlowProxSolver
        super().__init__()
        self.blocks = list(solver.chain.blocks)  # not registered: the solver owns them
        self.uses = [accepts_cond(b) for b in self.blocks]
        self.K, self.n = solver.K, solver.fold_blocks()
        #: storages (key -> bytes) of the inputs each checkpoint keeps, in the last forward; torch saves
        #: them with ``ctx.save_for_backward`` of a no-op Function, so the hooks see most of them already
        self.inputs: Dict[Any, int] = {}
        #: bytes of the CPU RNG states the checkpoints keep in their frames (preserve_rng_state=True)
        self.rng_bytes = 0

    def _fold(self, h: Tensor, y: Tensor, k: int) -> Tensor:
        for j in range(k * self.n, (k + 1) * self.n):
            h = self.blocks[j](h, y) if self.uses[j] else self.blocks[j](h)
        return h

    def forward(self, x0: Tensor, y: Tensor) -> Tensor:
        h, inputs = x0, {storage_key(y): y.untyped_storage().nbytes()}
        for k in range(self.K):
            inputs[storage_key(h)] = h.untyped_storage().nbytes()
            h = checkpoint(self._fold, h, y, k, use_reentrant=False)
        self.inputs = inputs
        self.rng_bytes = torch.get_rng_state().numel() * self.K
        return h

    def held_bytes(self, skip: set, rng: bool = True) -> int:
        """Bytes the checkpoints keep that are not in ``skip`` (what the hooks saw, parameters)."""
        return sum(v for k, v in self.inputs.items() if k not in skip) + (self.rng_bytes if rng else 0)

