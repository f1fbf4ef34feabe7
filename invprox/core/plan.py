"""The engine's plan of a chain: what it must do for each block, computed once per set of blocks.

For every block: whether it reads the cond tensors, whether it is invertible, whether it may draw random
numbers (then its random state is recorded and replayed), whether it is self-contained (then its
vector-Jacobian product is taken with respect to its own parameters and cond, without walking the graph),
its parameters, and the buffers a recompute may change (saved and restored around it). A chain rebuilds
its plan when its blocks or its parameters change (a block replaced, a parameter re-assigned); the
declarations it reads are documented in :mod:`invprox.core.block`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

from torch import Tensor, nn

from .block import accepts_cond, draws_random, is_invertible, is_self_contained, mutable_buffers

__all__ = ["Plan", "make_plan"]


@dataclass(frozen=True)
class Plan:
    """Per-block facts of a chain (lists indexed by block) and its parameters."""

    uses_cond: List[bool]
    invertible: List[bool]
    draws_random: List[bool]
    self_contained: List[bool]
    block_params: List[List[Tensor]]
    buffers: List[List[Tensor]]
    params: List[Tensor]

    def summary(self) -> str:
        """One line: how many blocks need which bookkeeping."""
        n = len(self.uses_cond)
        return (f"{n} blocks: {sum(self.draws_random)} may draw random numbers, "
                f"{n - sum(self.self_contained)} need a graph walk, "
                f"{sum(bool(b) for b in self.buffers)} restore buffers, "
                f"{n - sum(self.invertible)} not invertible")


def _unique(tensors) -> List[Tensor]:
    seen, out = set(), []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def make_plan(blocks: Sequence[nn.Module], params: Sequence[Tensor]) -> Plan:
    """The plan of ``blocks``; ``params`` are the chain's unique parameters in order."""
    return Plan(
        uses_cond=[accepts_cond(b) for b in blocks],
        invertible=[is_invertible(b) for b in blocks],
        draws_random=[draws_random(b) for b in blocks],
        self_contained=[is_self_contained(b) for b in blocks],
        block_params=[_unique(b.parameters()) for b in blocks],
        buffers=[mutable_buffers(b) for b in blocks],
        params=list(params),
    )
