"""Mixed precision (``torch.autocast``) and the engine: what is exact, a wrapper, an audit, a measurement.

The engine records each block's autocast state in the forward pass and replays it around the block's
inversion and recompute in the backward (:class:`~invprox.core.state.BlockState`). Whether that gives the
gradients of standard autograd under the same autocast depends on the block, not on the engine:

* A block whose **forward keeps its input's precision** is inverted as exactly under autocast as in
  float32. An affine or additive coupling is the case that matters: its network runs in bfloat16, but
  the network reads the untouched half, which the inverse has bit for bit, so the replayed network gives
  the same shift and scale and the inverse arithmetic stays in float32. The rebuilt state is then exact
  up to float32 rounding, as without autocast. (Running the inversion with autocast *disabled* would be
  wrong for couplings: the network would then give a float32 shift and scale that differ from the
  bfloat16 ones of the forward by about 2**-8.)
* A block whose **forward is quantised by autocast** cannot be inverted exactly by anything: Glow's
  invertible 1x1 convolution runs ``conv2d`` (and the matrix product building its weight) in bfloat16,
  so its output holds only bfloat16 precision of its input (relative error ~4e-3 per block, compounding
  through the chain). Run such a block in float32 (:class:`FullPrecision`; under 1% of a Glow's
  FLOPs), keep its input (``keep_every``), or accept the drift. :func:`audit_autocast` finds such blocks.

Measured (``python benchmarks/precision_errors.py``; numbers in ``docs/reliability.md``) on CPU with
``autocast(bfloat16)``: with every block precision-keeping, the engine's gradient equals standard autograd
under the same autocast to 1e-7 for a Glow and a one-fold solver, and to 3e-4 ... 5e-3 for a four-fold
solver (4 seeds; 4e-7 ... 9e-4 with one kept state per fold), where float32 rounding of a rebuilt state now
and then flips the bfloat16 rounding of a network input. Autocast itself moves the gradient by
2e-3 ... 6e-2 from float32, and the engine's gradient is as close to the float32 one as autocast
autograd's (same to two digits). The stated tolerance (``tests/test_precision.py``): the engine adds less
than 1e-2 and less than a quarter of autocast's own error. ``float16`` autocast on CPU behaves the same;
CUDA is not measured here.

Compare with standard autograd under autocast with ``cache_enabled=False``: autocast's weight-cast cache
makes a parameter used twice in one autocast region (a flow used forward and inverted in one fold) sum
its two gradients in bfloat16 before the cast back; the engine recomputes each block in its own region
and sums in float32 (more accurate, different by ~1e-4).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .block import (
    InvertibleModule,
    accepts_cond,
    check_block,
    declare_like,
    is_invertible,
)

__all__ = ["BlockAudit", "FullPrecision", "audit_autocast", "autocast_gradient_errors", "relative_error"]

_LOW = (torch.float16, torch.bfloat16)


def _device_type(t: Tensor) -> str:
    return t.device.type if t.device.type in ("cuda", "cpu", "xpu", "mps", "hpu") else "cpu"


def _narrower(a: torch.dtype, b: torch.dtype) -> bool:
    """``a`` is a floating dtype with fewer mantissa bits than floating ``b``."""
    if not (a.is_floating_point and b.is_floating_point):
        return False
    return torch.finfo(a).eps > torch.finfo(b).eps


class FullPrecision(InvertibleModule):
    """Run ``block`` with autocast disabled and its low-precision inputs cast up to ``dtype``.

    For blocks whose forward would otherwise be quantised by autocast (see the module docstring), so that
    the engine can invert them exactly. Forwards ``forward``, ``inverse``, the log-determinants and a
    fused ``rebuild`` / ``rebuild_inverse`` where the block has them. The block becomes a submodule
    (``state_dict`` keys gain a ``.block`` level).

    Args:
        block: an invertible block.
        dtype: the precision inputs in float16 / bfloat16 are cast to (float32).

    Example:
        >>> import torch
        >>> from invprox.flows import InvConv1x1
        >>> block = FullPrecision(InvConv1x1(4))
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     block(torch.randn(1, 4, 2, 2)).dtype
        torch.float32
    """

    def __init__(self, block: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        check_block(block)
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        self.block = block
        self.dtype = dtype
        declare_like(self, block)
        self.invertible = is_invertible(block)

    def _up(self, t: Any) -> Any:
        if isinstance(t, Tensor) and t.dtype in _LOW and _narrower(t.dtype, self.dtype):
            return t.to(self.dtype)
        return t

    def _call(self, fn: Callable, x: Tensor, cond: Sequence[Tensor], **kw: Any):
        with torch.autocast(_device_type(x), enabled=False):
            return fn(self._up(x), *(self._up(c) for c in cond), **kw)

    def forward(self, x: Tensor, *cond: Tensor) -> Tensor:
        return self._call(self.block, x, cond)

    def inverse(self, y: Tensor, *cond: Tensor) -> Tensor:
        return self._call(self.block.inverse, y, cond)

    def forward_and_logdet(self, x: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        from .block import forward_logdet

        return self._call(lambda *a: forward_logdet(self.block, *a), x, cond)

    def inverse_and_logdet(self, y: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        from .block import inverse_logdet

        return self._call(lambda *a: inverse_logdet(self.block, *a), y, cond)

    def _fused(self, name: str, out: Tensor, cond: Sequence[Tensor], logdet: bool):
        fn = getattr(self.block, name, None)
        if fn is None:
            return NotImplemented
        if out.dtype in _LOW:  # the rebuilt input must be a leaf: let the engine's default path cast
            return NotImplemented
        return self._call(fn, out, cond, logdet=logdet)

    def rebuild(self, y: Tensor, *cond: Tensor, logdet: bool = False):
        return self._fused("rebuild", y, cond, logdet)

    def rebuild_inverse(self, x: Tensor, *cond: Tensor, logdet: bool = False):
        return self._fused("rebuild_inverse", x, cond, logdet)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"


@dataclass
class BlockAudit:
    """One block of :func:`audit_autocast`: dtypes in and out, and the round-trip error under autocast."""

    index: int
    name: str
    in_dtype: torch.dtype
    out_dtype: torch.dtype
    roundtrip_error: float  # ||inverse(forward(x)) - x|| / ||x|| under autocast; nan if not invertible
    lossy: bool  # the engine cannot rebuild this block's input to the tolerance


def audit_autocast(
    blocks: Union[nn.Module, Sequence[nn.Module]],
    x: Tensor,
    *cond: Tensor,
    dtype: torch.dtype = torch.bfloat16,
    tol: float = 1e-5,
) -> List[BlockAudit]:
    """Run ``blocks`` one by one under ``autocast(dtype)`` and report which ones are not invertible there.

    A block is *lossy* when ``inverse(forward(h))`` under the same autocast differs from ``h`` by more than
    ``tol`` (relative), or when its output has a narrower floating dtype than its input. Wrap lossy
    blocks in :class:`FullPrecision`, or keep their inputs (``keep_every``).

    Args:
        blocks: an :class:`~invprox.InvertibleChain` (its ``blocks``) or a sequence of blocks.
        x: an input of the first block; ``cond``: the chain's conditioning tensors.
        dtype: the autocast dtype (``torch.bfloat16``; ``torch.float16`` on CUDA).
        tol: relative round-trip tolerance.

    Returns:
        One :class:`BlockAudit` per block, in order.
    """
    blocks = list(getattr(blocks, "blocks", blocks))
    if not all(isinstance(b, nn.Module) for b in blocks):
        raise TypeError("blocks must be an InvertibleChain or a sequence of modules")
    out: List[BlockAudit] = []
    h = x
    dev = _device_type(x)
    with torch.no_grad(), torch.autocast(dev, dtype=dtype):
        for i, b in enumerate(blocks):
            cb = cond if accepts_cond(b) else ()
            y = b(h, *cb)
            err = math.nan
            if is_invertible(b):
                back = b.inverse(y, *cb).to(torch.float64)
                ref = h.to(torch.float64)
                err = float((back - ref).norm() / ref.norm().clamp_min(1e-30))
            lossy = _narrower(y.dtype, h.dtype) or (not math.isnan(err) and not err <= tol)
            out.append(BlockAudit(i, type(b).__name__, h.dtype, y.dtype, err, lossy))
            h = y
    return out


def _set_memory_efficient(model: nn.Module, value: bool) -> None:
    from .chain import InvertibleChain

    for m in model.modules():
        if isinstance(m, InvertibleChain):
            m.memory_efficient = value


def relative_error(a: Sequence[Optional[Tensor]], b: Sequence[Optional[Tensor]]) -> float:
    """``||a - b|| / ||b||`` over the concatenation of two lists of tensors (``None`` counts as zeros)."""
    num = den = 0.0
    for u, v in zip(a, b):
        if u is None and v is None:
            continue
        u = torch.zeros_like(v) if u is None else u
        v = torch.zeros_like(u) if v is None else v
        num += float((u.double() - v.double()).square().sum())
        den += float(v.double().square().sum())
    return (num ** 0.5) / max(den ** 0.5, 1e-300)


def autocast_gradient_errors(
    model: nn.Module,
    *inputs: Tensor,
    loss_fn: Optional[Callable[[Tensor], Tensor]] = None,
    dtype: torch.dtype = torch.bfloat16,
) -> Dict[str, float]:
    """Relative errors of the gradient (parameters and floating inputs) under autocast, engine vs autograd.

    Runs four copies of ``model`` (every :class:`~invprox.InvertibleChain` in it switched between the
    engine and standard autograd): float32 autograd (the reference), float32 engine, autocast autograd
    (weight-cast cache off, see the module docstring) and autocast engine.

    Args:
        model: a float32 module containing invertible chains.
        *inputs: its inputs (floating ones get gradients).
        loss_fn: maps the output to a scalar; default the mean square of the output.
        dtype: autocast dtype.

    Returns:
        A dict: ``engine_fp32`` (engine vs autograd in float32), ``autocast`` (autocast autograd vs
        float32), ``engine_autocast`` (autocast engine vs float32) and ``engine_vs_autocast`` (autocast
        engine vs autocast autograd: the error the engine adds under autocast).
    """
    loss_fn = loss_fn or (lambda out: out.float().square().mean())
    dev = _device_type(inputs[0]) if inputs else "cpu"

    def grads(engine: bool, amp: bool) -> List[Tensor]:
        m = copy.deepcopy(model)
        _set_memory_efficient(m, engine)
        xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        ctx = torch.autocast(dev, dtype=dtype, cache_enabled=False) if amp else contextlib.nullcontext()
        with ctx:
            loss = loss_fn(m(*xs))
        wrt = [t for t in xs if t.requires_grad] + [p for p in m.parameters() if p.requires_grad]
        return list(torch.autograd.grad(loss, wrt, allow_unused=True))

    ref, eng = grads(False, False), grads(True, False)
    amp, amp_eng = grads(False, True), grads(True, True)
    return {
        "engine_fp32": relative_error(eng, ref),
        "autocast": relative_error(amp, ref),
        "engine_autocast": relative_error(amp_eng, ref),
        "engine_vs_autocast": relative_error(amp_eng, amp),
    }
