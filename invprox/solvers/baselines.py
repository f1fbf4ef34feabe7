"""The baselines of the seed paper's Table 1: unrolled proximal gradient with CNN prox networks.

Every baseline runs the same scheme as :class:`~invprox.solvers.FlowProxSolver`, with a learned step
``mu_k`` per fold (a :class:`~invprox.physics.DataConsistency` block) and an untied prox network ``P_k``:

    x_{k+1} = P_k(x_k - mu_k A^T (A x_k - y)),        k = 0 .. K-1

Unlike the flow solver (which works in flow space ``x01 - 0.5``), the baselines work directly in image
space ``[0, 1]``; they start at the back-projection ``x_0 = A^T y`` (the paper's), or with
``start="smooth"`` at the flow solver's default start (:mod:`.start`). For every
built-in operator that start has the right scale: ``y`` itself for denoising, zeros in the holes for
inpainting, the blurred image for deblurring, zero-filled upsampling for super-resolution, and for
compressed sensing (``N(0, 1/m)`` entries, so ``E[A^T A] = I``) an unbiased but aliased estimate.

Prox networks (after Mardani et al. 2018, and a small U-Net after Ronneberger et al. 2015) are residual:
``P(x) = x + r(x)``. ``checkpoint=True`` runs each fold (DC + prox) under :func:`torch.utils.checkpoint`
(``use_reentrant=False``); batch-norm running statistics are updated once per fold, not again in the
recompute, so a checkpointed model's state matches the plain one's.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..physics import DataConsistency
from ._physics import SwappablePhysics
from .start import SmoothStart

__all__ = ["ResNetProx", "UNetProx", "UnrolledSolver", "ResNetProxSolver", "UNetProxSolver"]

ProxSpec = Union[nn.Module, Sequence[nn.Module], Callable[[], nn.Module]]


def _pos_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


class _ResBlock(nn.Module):
    """``x + BN(conv(ReLU(BN(conv(x)))))``, then ReLU: two 3x3 convolutions with batch norm."""

    def __init__(self, features: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1, bias=False),
            nn.BatchNorm2d(features),
            nn.ReLU(inplace=True),
            nn.Conv2d(features, features, 3, padding=1, bias=False),
            nn.BatchNorm2d(features),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class ResNetProx(nn.Module):
    """ResNet prox after Mardani et al. (2018): ``P(x) = x + r(x)``.

    ``r``: a 3x3 convolution lifting ``channels`` to ``features`` maps (batch norm, ReLU), ``n_blocks``
    residual blocks of two 3x3 convolutions with ``features`` maps, batch norm and ReLU, then three 1x1
    convolutions (``features -> features -> features -> channels``, ReLU after the first two).

    Args:
        channels: image channels.
        features: feature maps of the 3x3 convolutions (128 in the seed paper).
        n_blocks: residual blocks.

    Shapes:
        ``(B, channels, H, W) -> (B, channels, H, W)``, any ``H, W``.
    """

    def __init__(self, channels: int, features: int = 128, n_blocks: int = 2):
        super().__init__()
        c, f = _pos_int("channels", channels), _pos_int("features", features)
        _pos_int("n_blocks", n_blocks)
        self.head = nn.Sequential(
            nn.Conv2d(c, f, 3, padding=1, bias=False), nn.BatchNorm2d(f), nn.ReLU(inplace=True)
        )
        self.blocks = nn.Sequential(*(_ResBlock(f) for _ in range(n_blocks)))
        self.tail = nn.Sequential(
            nn.Conv2d(f, f, 1), nn.ReLU(inplace=True), nn.Conv2d(f, f, 1), nn.ReLU(inplace=True),
            nn.Conv2d(f, c, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.tail(self.blocks(self.head(x)))


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNetProx(nn.Module):
    """A small U-Net prox (Ronneberger et al. 2015): ``P(x) = x + r(x)``.

    ``depth`` encoder levels (double 3x3 conv with batch norm and ReLU, then 2x2 max-pooling; the
    features double at every level), a bottleneck, and ``depth`` decoder levels (2x2 transposed
    convolution, concatenation with the encoder's skip connection, double conv), then a 1x1 convolution
    to ``channels``. Inputs whose size is not a multiple of ``2**depth`` are padded (replicate) and the
    output cropped back.

    Args:
        channels: image channels.
        features: feature maps of the first level.
        depth: number of down/up-sampling levels.

    Shapes:
        ``(B, channels, H, W) -> (B, channels, H, W)``, any ``H, W``.
    """

    def __init__(self, channels: int, features: int = 32, depth: int = 2):
        super().__init__()
        c, f = _pos_int("channels", channels), _pos_int("features", features)
        self.depth = _pos_int("depth", depth)
        widths = [f * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(_double_conv(cin, cout) for cin, cout in zip([c] + widths, widths[:-1]))
        self.bottleneck = _double_conv(widths[-2], widths[-1])
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)
        )
        self.dec = nn.ModuleList(_double_conv(2 * widths[i], widths[i]) for i in range(depth))
        self.out = nn.Conv2d(f, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-H) % m, (-W) % m
        h = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        skips = []
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.bottleneck(h)
        for i in reversed(range(self.depth)):
            h = self.dec[i](torch.cat([skips[i], self.up[i](h)], dim=1))
        return x + self.out(h)[..., :H, :W]


@contextlib.contextmanager
def _frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Run batch norm without touching its running statistics (for the checkpoint recompute)."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nbt = None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
            saved.append((m, m.momentum, nbt))
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, momentum, nbt in saved:
            m.momentum = momentum
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)


class UnrolledSolver(SwappablePhysics):
    """K folds of ``x <- P_k(x - mu_k A^T (A x - y))`` with untied prox networks and learned steps.

    Args:
        prox: the prox networks: a list, tuple or ``nn.ModuleList`` of ``K`` distinct modules (used as
            they are), a single module, ``nn.Sequential`` included (deep-copied into every fold), or a
            factory called with no argument once per fold.
        physics: the default forward operator (``A``, ``A_adjoint``); a call may pass another,
            ``solver(y, op)``, used for that call only; ``solver.physics = op`` changes the default.
        K: number of folds (inferred from a sequence of modules when ``None``; required otherwise).
        checkpoint: run each fold under :func:`torch.utils.checkpoint` (``use_reentrant=False``).
        mu_init: initial step ``mu_k`` as a fraction of ``1 / ||A||^2`` (see ``DataConsistency``).
        start: ``"backprojection"`` (default, the seed paper's ``x_0 = A^T y``) or ``"smooth"``
            (:class:`~invprox.solvers.start.SmoothStart`, the flow solver's default start).

    Shapes:
        ``y``: shape of ``physics.A(x)``; output ``(B, C, H, W)`` in image space ``[0, 1]`` (not clamped).
    """

    def __init__(
        self,
        prox: ProxSpec,
        physics: Any,
        K: Optional[int] = None,
        checkpoint: bool = False,
        mu_init: float = 0.5,
        start: str = "backprojection",
    ):
        super().__init__()
        if start not in ("backprojection", "smooth"):
            raise ValueError(f"start must be 'backprojection' or 'smooth', got {start!r}")
        self.smooth_start = SmoothStart() if start == "smooth" else None
        if isinstance(prox, nn.Module) and not isinstance(prox, nn.ModuleList):  # nn.Sequential: one net
            K = _pos_int("K", K)
            nets = [copy.deepcopy(prox) for _ in range(K)]
        elif isinstance(prox, (list, tuple, nn.ModuleList)):
            nets = list(prox)
            if not nets or not all(isinstance(p, nn.Module) for p in nets):
                raise TypeError("prox must be a non-empty sequence of nn.Module")
            if K is not None and _pos_int("K", K) != len(nets):
                raise ValueError(f"K={K} but {len(nets)} prox modules were given")
            if len({id(p) for p in nets}) != len(nets):
                raise ValueError("prox modules must be distinct (untied folds)")
        elif callable(prox):
            K = _pos_int("K", K)
            nets = [prox() for _ in range(K)]
            if not all(isinstance(p, nn.Module) for p in nets):
                raise TypeError("the prox factory must return nn.Module instances")
        else:
            raise TypeError(
                f"prox must be a module, a sequence of modules or a factory, got {type(prox).__name__}"
            )
        self.K = len(nets)
        self.prox = nn.ModuleList(nets)
        self.dc = nn.ModuleList(DataConsistency(physics, mu_init=mu_init) for _ in range(self.K))
        self.physics = physics
        self.checkpoint = bool(checkpoint)

    def step_parameters(self) -> List[nn.Parameter]:
        """The learned step sizes ``mu_k`` (own learning rate, as in the flow solver)."""
        return [p for dc in self.dc for p in dc.parameters()]

    def start(self, y: Tensor, physics: Any = None) -> Tensor:
        """``x_0``: ``A^T y`` or the smooth start (image space, see ``start``)."""
        op = self.physics if physics is None else physics
        if self.smooth_start is not None:
            return self.smooth_start(y, op)
        return op.A_adjoint(y)

    def fold(self, k: int, x: Tensor, y: Tensor, physics: Any = None) -> Tensor:
        """One fold: ``P_k(x - mu_k A^T (A x - y))`` (``A`` of ``physics``, default the solver's)."""
        dc = self.dc[k] if physics is None else self.dc[k].bind(physics)
        return self.prox[k](dc(x, y))

    @torch.no_grad()
    def iterates(self, y: Tensor, physics: Any = None) -> List[Tensor]:
        """The image after each fold, ``[x_1, ..., x_K]`` (``x_K`` is the output), without gradients."""
        x, out = self.start(y, physics), []
        for k in range(self.K):
            x = self.fold(k, x, y, physics)
            out.append(x)
        return out

    def forward(self, y: Tensor, physics: Any = None) -> Tensor:
        """Reconstruct from the measurement ``y`` (with ``physics`` for this call, default the solver's);
        returns the image estimate in ``[0, 1]`` space."""
        if not isinstance(y, Tensor) or y.dim() < 2:
            raise ValueError(f"y must be a batched measurement tensor, got {type(y).__name__}")
        op = physics
        x = self.start(y, op)
        use_ckpt = self.checkpoint and torch.is_grad_enabled()
        for k in range(self.K):
            if use_ckpt:
                net = self.prox[k]

                def ctx(net: nn.Module = net):
                    return contextlib.nullcontext(), _frozen_batchnorm_stats(net)

                x = _checkpoint(self.fold, k, x, y, op, use_reentrant=False, context_fn=ctx)
            else:
                x = self.fold(k, x, y, op)
        return x

    def extra_repr(self) -> str:
        return f"K={self.K}, checkpoint={self.checkpoint}, physics={type(self.physics).__name__}"


class ResNetProxSolver(UnrolledSolver):
    """:class:`UnrolledSolver` with untied :class:`ResNetProx` folds (the "ResNet Prox" of Table 1)."""

    def __init__(
        self,
        physics: Any,
        K: int = 4,
        channels: int = 3,
        features: int = 128,
        n_blocks: int = 2,
        checkpoint: bool = False,
        mu_init: float = 0.5,
        start: str = "backprojection",
    ):
        _pos_int("K", K)
        super().__init__(
            lambda: ResNetProx(channels, features, n_blocks), physics, K, checkpoint, mu_init, start
        )


class UNetProxSolver(UnrolledSolver):
    """:class:`UnrolledSolver` with untied :class:`UNetProx` folds (the "U-Net Prox" of Table 1)."""

    def __init__(
        self,
        physics: Any,
        K: int = 4,
        channels: int = 3,
        features: int = 32,
        depth: int = 2,
        checkpoint: bool = False,
        mu_init: float = 0.5,
        start: str = "backprojection",
    ):
        _pos_int("K", K)
        super().__init__(lambda: UNetProx(channels, features, depth), physics, K, checkpoint, mu_init, start)
