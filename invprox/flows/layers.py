"""Glow's layers as engine blocks: ActNorm, LU-parametrised invertible 1x1 convolution, squeeze, the
learned split prior, and a wrapper that applies a block to a leading channel range.

Every class here follows the block contract of :mod:`invprox.core.block`: ``forward(x)``, ``inverse(y)``,
``forward_and_logdet(x) -> (y, logdet)`` and ``inverse_and_logdet(y) -> (x, logdet)``, with ``logdet`` of
shape ``(B,)``. Inputs are image-shaped, ``(B, C, H, W)``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..core.block import (
    InvertibleModule,
    declare_like,
    forward_logdet,
    inverse_logdet,
)
from ..core.chain import is_recomputing
from .coupling import AffineCoupling, _Coupling

__all__ = ["ActNorm", "InvConv1x1", "Squeeze", "Unsqueeze", "SplitPrior", "ChannelRange"]


def _check_4d(block: nn.Module, x: Tensor, channels: int) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(
            f"{type(block).__name__} expects input of shape (B, {channels}, H, W), got {tuple(x.shape)}"
        )


class ActNorm(InvertibleModule):
    """Per-channel affine normalisation ``y = (x + loc) * exp(log_scale)`` with data-dependent init.

    The first forward call in training mode (``module.training``) sets ``loc`` and ``log_scale`` so that
    the output of that batch has zero mean and unit variance per channel, then sets the ``initialized``
    buffer (saved in the state dict). The engine's backward recompute never initialises (see
    :func:`invprox.is_recomputing`); neither does :meth:`inverse` nor evaluation mode.

    ``log|det| = H * W * sum(log_scale)``.

    Args:
        channels: number of channels ``C``.
        eps: added to the standard deviation in the data init.
    """

    # the engine's plan (invprox.core.block): no randomness, reads only its parameters, and a recompute
    # never initialises, so the ``initialized`` flag needs no restore
    draws_random = False
    self_contained = True
    static_buffers = True

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        # the version of ``initialized`` last seen True: reading a CUDA flag syncs the device, so it is
        # read again only after something wrote it (initialize, load_state_dict, a buffer restore)
        self._seen_version = -1

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``loc`` and ``log_scale`` so that ``forward(x)`` has zero mean, unit variance per channel."""
        _check_4d(self, x, self.channels)
        if x.numel() == 0:
            raise ValueError(
                f"ActNorm's data-dependent initialisation needs a non-empty batch, got shape "
                f"{tuple(x.shape)}; initialise on a real batch first"
            )
        xt = x.detach().transpose(0, 1).reshape(self.channels, -1)
        mean = xt.mean(1)
        std = xt.std(1, unbiased=False)
        self.loc.copy_(-mean.view(1, -1, 1, 1))
        self.log_scale.copy_(-torch.log(std + self.eps).view(1, -1, 1, 1))
        self.initialized.fill_(True)

    def _logdet(self, x: Tensor) -> Tensor:
        ld = self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return ld.expand(x.shape[0])

    def forward_and_logdet(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self.forward(x), self._logdet(x)

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(self, x, self.channels)
        if self.training and self.initialized._version != self._seen_version and not is_recomputing():
            if not bool(self.initialized):
                self.initialize(x)
            self._seen_version = self.initialized._version
        return (x + self.loc) * torch.exp(self.log_scale)

    def inverse_and_logdet(self, y: Tensor) -> Tuple[Tensor, Tensor]:
        return self.inverse(y), -self._logdet(y)

    def inverse(self, y: Tensor) -> Tensor:
        _check_4d(self, y, self.channels)
        return y * torch.exp(-self.log_scale) - self.loc

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def random_rotation(channels: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """A random orthogonal ``(C, C)`` matrix (QR of a Gaussian matrix, signs fixed), float64."""
    a = torch.randn(channels, channels, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


class InvConv1x1(InvertibleModule):
    """Invertible 1x1 convolution, LU-parametrised: ``W = P L (U + diag(sign_s * exp(log_s)))``.

    ``P`` (a permutation) and ``sign_s`` are fixed buffers; ``L`` is unit lower triangular (its strictly
    lower part is the parameter ``lower``), ``U`` strictly upper triangular (``upper``), and ``log_s`` a
    parameter. Initialised from a random rotation, so ``log|det W| = 0`` at the start.
    ``log|det| = H * W * sum(log_s)``.

    Args:
        channels: number of channels ``C``.
        generator: a CPU generator for the random rotation (reproducible init); default the global RNG.
    """

    draws_random = False
    self_contained = True
    static_buffers = True  # perm, sign_s and the mask never change

    def __init__(self, channels: int, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.channels = channels
        w = random_rotation(channels, generator)
        p, lo, up = torch.linalg.lu(w)
        s = torch.diagonal(up)
        dtype = torch.get_default_dtype()
        self.register_buffer("perm", p.to(dtype))
        self.register_buffer("sign_s", torch.sign(s).to(dtype))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1), persistent=False)
        self.lower = nn.Parameter(torch.tril(lo, -1).to(dtype))
        self.upper = nn.Parameter(torch.triu(up, 1).to(dtype))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).to(dtype))
        self._cache_key: Optional[list] = None  # copies of the values W was computed from
        self._cache: Tuple[Tensor, Tensor] = ()  # (W, W^-1) without a graph, see matrix()

    def weight(self) -> Tensor:
        """The ``(C, C)`` matrix ``W``."""
        eye = torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)
        lo = self.lower * self.lower_mask + eye
        up = self.upper * self.lower_mask.t() + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lo @ up

    def _logdet(self, x: Tensor) -> Tensor:
        return (self.log_s.sum() * (x.shape[2] * x.shape[3])).expand(x.shape[0])

    def _full_precision(self, x: Tensor):
        """Autocast off, and a float16 / bfloat16 input cast to the weight's dtype.

        Under autocast the matrix product and ``conv2d`` would run in low precision, which quantises
        the output to bfloat16 (float16) precision of the input: no inverse could rebuild the input, and
        the engine's backward would drift by ~2**-8 per 1x1 convolution. A C x C 1x1 convolution is well
        under 1% of a Glow step's FLOPs (the coupling network, which may stay in low precision, dominates).
        """
        dev = x.device.type
        ctx = torch.autocast(dev, enabled=False) if torch.amp.is_autocast_available(dev) else nullcontext()
        if x.dtype in (torch.float16, torch.bfloat16) and x.dtype != self.lower.dtype:
            x = x.to(self.lower.dtype)
        return ctx, x

    def matrix(self, inverse: bool = False) -> Tensor:
        """``W`` (or ``W^-1``) for the current parameters.

        With a graph when autograd records one (grad mode and a parameter that requires grad); otherwise
        a cached copy, computed again whenever the parameters' values change (an optimizer step, a load,
        ``.to()``): the engine's forward pass and its inverses run without a graph and so invert the matrix
        once per training step, not once per call. The cache compares values, not version counters:
        torch's fused optimizers (``Adam(fused=True)`` on the CPU in torch 2.13) update parameters in place
        without bumping their versions.
        """
        params = (self.lower, self.upper, self.log_s)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            w = self.weight()
            return torch.linalg.inv(w) if inverse else w
        now = (*params, self.perm, self.sign_s)
        old = self._cache_key
        if old is None or any(a.dtype != b.dtype or a.device != b.device or a.shape != b.shape
                              or not torch.equal(a, b) for a, b in zip(old, now)):
            with torch.no_grad():
                w = self.weight()
                self._cache = (w, torch.linalg.inv(w))
                self._cache_key = [t.detach().clone() for t in now]
        return self._cache[1 if inverse else 0]

    def _apply_matrix(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w.view(self.channels, self.channels, 1, 1))

    def forward_and_logdet(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self.forward(x), self._logdet(x)

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(self, x, self.channels)
        ctx, x = self._full_precision(x)
        with ctx:
            return self._apply_matrix(x, self.matrix())

    def inverse_and_logdet(self, y: Tensor) -> Tuple[Tensor, Tensor]:
        return self.inverse(y), -self._logdet(y)

    def inverse(self, y: Tensor) -> Tensor:
        _check_4d(self, y, self.channels)
        ctx, y = self._full_precision(y)
        with ctx:
            return self._apply_matrix(y, self.matrix(inverse=True))

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def squeeze2d(x: Tensor) -> Tensor:
    """Space-to-depth 2x2: ``(B, C, H, W) -> (B, 4C, H/2, W/2)``; channel ``c`` goes to ``4c .. 4c+3``."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"squeeze needs even height and width, got {h}x{w}")
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze2d(x: Tensor) -> Tensor:
    """Depth-to-space 2x2, the inverse of :func:`squeeze2d`."""
    b, c, h, w = x.shape
    if c % 4:
        raise ValueError(f"unsqueeze needs channels divisible by 4, got {c}")
    x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, 2 * h, 2 * w)


class Squeeze(InvertibleModule):
    """Space-to-depth 2x2 (:func:`squeeze2d`), a permutation: volume preserving."""

    volume_preserving = True
    draws_random = False
    self_contained = True

    def forward(self, x: Tensor) -> Tensor:
        return squeeze2d(x)

    def inverse(self, y: Tensor) -> Tensor:
        return unsqueeze2d(y)


class Unsqueeze(InvertibleModule):
    """Depth-to-space 2x2 (:func:`unsqueeze2d`), the inverse of :class:`Squeeze`."""

    volume_preserving = True
    draws_random = False
    self_contained = True

    def forward(self, x: Tensor) -> Tensor:
        return unsqueeze2d(x)

    def inverse(self, y: Tensor) -> Tensor:
        return squeeze2d(y)


class _ZeroConv(nn.Conv2d):
    """A zero-initialised 3x3 convolution (Glow's ``Conv2dZeros`` without its output scale)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class SplitPrior(AffineCoupling):
    """Glow's learned split prior written as an invertible affine map (a coupling).

    The first ``C // 2`` channels ``h`` are kept; the rest ``x2`` are factored out with the conditional
    prior ``N(mean(h), exp(logs(h))^2)``. Instead of evaluating that density, this block normalises
    ``x2`` to ``z2 = (x2 - mean(h)) * exp(-logs(h))``, which is ``N(0, I)`` exactly when ``x2`` follows the
    learned prior; the kept half passes unchanged. ``log|det| = -sum(logs)``.

    ``mean`` and ``logs`` come from one zero-initialised 3x3 convolution of ``h``, so the block starts as
    the identity. The coupling's fused rebuild applies.

    Args:
        channels: channels ``C`` of the input (kept plus factored).
    """

    def __init__(self, channels: int):
        c1 = channels // 2
        super().__init__(channels, net=_ZeroConv(c1, 2 * (channels - c1)))
        self.draws_random, self.self_contained = False, True  # its own convolution

    def _params(self, x1, cond):
        h = self.net(x1)
        mean, logs = h[:, : self.c2], h[:, self.c2 :]
        return -mean, torch.exp(-logs)


class ChannelRange(InvertibleModule):
    """Apply ``block`` to the first ``channels`` channels and pass the others through unchanged.

    Lets a multi-scale flow keep the whole latent in one tensor: later levels act on the kept channels
    only. Couplings (including :class:`SplitPrior`) keep their fused one-pass rebuild through this wrapper.

    Args:
        block: an invertible block on ``(B, channels, H, W)``.
        channels: the channel range ``[0, channels)`` that ``block`` acts on.
    """

    def __init__(self, block: nn.Module, channels: int):
        super().__init__()
        self.block = block
        self.channels = channels
        declare_like(self, block)  # the engine passes cond only where the inner block reads it

    def _split(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if x.dim() < 2 or x.shape[1] < self.channels:
            raise ValueError(
                f"ChannelRange({self.channels}) needs at least {self.channels} channels, "
                f"got shape {tuple(x.shape)}"
            )
        return x[:, : self.channels], x[:, self.channels :]

    def forward_and_logdet(self, x: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        a, rest = self._split(x)
        ya, ld = forward_logdet(self.block, a, *cond)
        return torch.cat([ya, rest], 1), ld

    def forward(self, x: Tensor, *cond: Tensor) -> Tensor:
        a, rest = self._split(x)
        return torch.cat([self.block(a, *cond), rest], 1)

    def inverse_and_logdet(self, y: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        a, rest = self._split(y)
        xa, ld = inverse_logdet(self.block, a, *cond)
        return torch.cat([xa, rest], 1), ld

    def inverse(self, y: Tensor, *cond: Tensor) -> Tensor:
        a, rest = self._split(y)
        return torch.cat([self.block.inverse(a, *cond), rest], 1)

    def _fused(self, out: Tensor, cond, logdet: bool, forward: bool):
        """The coupling's one-pass rebuild (see :mod:`invprox.flows.coupling`) on the channel range."""
        cp: _Coupling = self.block
        n, c1 = self.channels, cp.c1
        cp._check(out[:, :n])
        inp = torch.empty_like(out)
        with torch.no_grad():
            inp[:, :c1] = out[:, :c1]
            inp[:, n:] = out[:, n:]
        inp.requires_grad_()
        t, s = cp._params(inp[:, :c1].clone(), cond)
        with torch.no_grad():
            o2 = out[:, c1:n]
            if forward:
                inp[:, c1:n] = o2 - t if s is None else o2 / s - t
            else:
                inp[:, c1:n] = o2 + t if s is None else (o2 + t) * s
        i2 = inp[:, c1:n]
        if forward:
            o2g = i2 + t if s is None else (i2 + t) * s
        else:
            o2g = i2 - t if s is None else i2 / s - t
        graph = torch.cat([inp[:, :c1], o2g, inp[:, n:]], 1)
        ld = None
        if logdet:
            ld = cp._logdet(s, out) if forward else -cp._logdet(s, out)
        return inp, graph, ld

    def rebuild(self, y: Tensor, *cond: Tensor, logdet: bool = False):
        if not isinstance(self.block, _Coupling):
            return NotImplemented
        return self._fused(y, cond, logdet, forward=True)

    def rebuild_inverse(self, x: Tensor, *cond: Tensor, logdet: bool = False):
        if not isinstance(self.block, _Coupling):
            return NotImplemented
        return self._fused(x, cond, logdet, forward=False)

    def extra_repr(self) -> str:
        return f"channels=[0, {self.channels})"
