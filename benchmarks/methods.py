"""The training methods the benchmarks compare, in one place: standard autograd, ``torch.utils.checkpoint``
per block (or per group of blocks), memcnn's ``InvertibleModuleWrapper`` per block, and the invprox engine.

Every adapter takes a list of engine blocks (``forward(x, *cond)``, ``inverse(y, *cond)``) and runs them in
order; the benchmarks (``engine_depth.py``: a chain of couplings; ``solver_k.py``: the blocks of an unrolled
solver) build their models from these.
"""

from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["import_memcnn", "BindCond", "MemcnnSequential", "CheckpointSequential", "memcnn_sequential"]


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
