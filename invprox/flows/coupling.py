"""Affine and additive coupling layers (Real NVP / Glow) with a fused rebuild for the engine.

The input ``x`` of shape ``(B, C, H, W)`` is split along channels into ``x1`` (the first ``C // 2``) and
``x2``. A network reads ``x1`` (and any conditioning tensors, concatenated along channels) and gives a
shift ``t`` and, for the affine coupling, a scale ``s = sigmoid(r + 2)`` (Glow's choice: ``s`` lies in
(0, 1) and starts near 0.88):

    affine:   y1 = x1,  y2 = (x2 + t) * s,   log|det| = sum log s
    additive: y1 = x1,  y2 = x2 + t,         log|det| = 0

The network's last layer is zero-initialised, so each coupling starts as (a scaled) identity.

A conditioning image can also enter through ``inject_channels``: the last cond tensor (at the coupling's
resolution) is added to the network's first hidden layer by a zero-initialised 1x1 convolution, so a
coupling made conditional this way computes, until trained, exactly what it computed without the
condition (how :meth:`invprox.flows.Glow.with_condition` turns a pre-trained Glow into a conditional one).

``rebuild`` gives the engine the input and the graph of the forward in a single pass of the network: the
network runs once on ``y1 = x1``, which yields both ``x2`` and the graph.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..core.block import InvertibleModule

__all__ = ["CouplingNet", "AffineCoupling", "AdditiveCoupling"]


class CouplingNet(nn.Sequential):
    """Glow's coupling network: 3x3 conv, ReLU, 1x1 conv, ReLU, zero-initialised 3x3 conv.

    Args:
        in_channels: channels read (``x1`` plus conditioning channels).
        out_channels: channels produced.
        hidden: hidden channels.
        dropout: dropout probability after each hidden activation (0 disables it).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, dropout: float = 0.0):
        layers = [nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Conv2d(hidden, hidden, 1), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        last = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        super().__init__(*layers)


class _Coupling(InvertibleModule):
    affine = False

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        cond_channels: int = 0,
        dropout: float = 0.0,
        net: Optional[nn.Module] = None,
        scale_min: float = 0.0,
        inject_channels: int = 0,
    ):
        super().__init__()
        if inject_channels and (cond_channels or net is not None):
            raise ValueError("inject_channels needs Glow's own network and no cond_channels (the "
                             "conditioning enters one way or the other)")
        if inject_channels < 0:
            raise ValueError(f"inject_channels must be >= 0, got {inject_channels}")
        if not 0.0 <= scale_min < 1.0:
            raise ValueError(f"scale_min must be in [0, 1), got {scale_min!r}")
        self.scale_min = float(scale_min)
        if channels < 2:
            raise ValueError(f"a coupling needs at least 2 channels to split, got {channels}")
        if hidden < 1:
            raise ValueError(f"hidden must be positive, got {hidden}")
        self.channels = channels
        self.c1 = channels // 2
        self.c2 = channels - self.c1
        self.cond_channels = cond_channels
        out = self.c2 * (2 if self.affine else 1)
        self.net = net if net is not None else CouplingNet(self.c1 + cond_channels, out, hidden, dropout)
        self.inject_channels = inject_channels
        self.inject: Optional[nn.Conv2d] = None
        if inject_channels:
            self.inject = nn.Conv2d(inject_channels, hidden, 1, bias=False)
            nn.init.zeros_(self.inject.weight)
        # the engine's plan (invprox.core.block): a network of our own, without dropout, is known to draw
        # no random numbers and to read only its parameters; a network passed in is not
        self.draws_random = net is not None or dropout > 0
        self.self_contained = net is None
        self.uses_cond = cond_channels > 0 or inject_channels > 0  # only a network that reads cond gets it

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (B, {self.channels}, H, W), "
                f"got {tuple(x.shape)}"
            )

    def _params(self, x1: Tensor, cond: Sequence[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """Shift and scale (``None`` for additive) from the untouched half."""
        if self.inject is not None:
            if not cond:
                raise ValueError(f"{type(self).__name__} with inject_channels={self.inject_channels} needs "
                                 f"its conditioning tensor: call it with (x, cond)")
            layers = iter(self.net)
            h = next(layers)(x1) + self.inject(cond[-1])
            for layer in layers:
                h = layer(h)
        else:
            if self.cond_channels:
                x1 = torch.cat([x1, *cond], dim=1)
            h = self.net(x1)
        if not self.affine:
            return h, None
        t, r = h[:, : self.c2], h[:, self.c2 :]
        s = torch.sigmoid(r + 2.0)
        return t, s if not self.scale_min else self.scale_min + (1.0 - self.scale_min) * s

    def _logdet(self, s: Optional[Tensor], x: Tensor) -> Tensor:
        if s is None:
            return x.new_zeros(x.shape[0])
        return torch.log(s).flatten(1).sum(1)

    # -- forward / inverse ---------------------------------------------------------------------------
    def _map(self, x: Tensor, cond: Sequence[Tensor], forward: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """The forward (or inverse) map of ``x`` and the scale it used (``None``: additive)."""
        self._check(x)
        x1, x2 = x[:, : self.c1], x[:, self.c1 :]
        t, s = self._params(x1, cond)
        if forward:
            y2 = x2 + t if s is None else (x2 + t) * s
        else:
            y2 = x2 - t if s is None else x2 / s - t
        return torch.cat([x1, y2], dim=1), s

    def forward_and_logdet(self, x: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        y, s = self._map(x, cond, True)
        return y, self._logdet(s, x)

    def forward(self, x: Tensor, *cond: Tensor) -> Tensor:  # no log-determinant computed
        return self._map(x, cond, True)[0]

    def inverse_and_logdet(self, y: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        x, s = self._map(y, cond, False)
        return x, -self._logdet(s, y)

    def inverse(self, y: Tensor, *cond: Tensor) -> Tensor:
        return self._map(y, cond, False)[0]

    # -- fused rebuilds for the engine ---------------------------------------------------------------
    def _fused(self, out: Tensor, cond: Sequence[Tensor], logdet: bool, forward: bool):
        """Rebuild the input of the forward (or of the inverse) map from ``out`` with one network pass.

        The rebuilt input is one leaf tensor. Its first half is known (it equals ``out``'s); the network
        runs on a copy of it with a graph, the second half is then filled in without a graph, and the map
        is applied to the leaf with a graph.
        """
        self._check(out)
        c1 = self.c1
        inp = torch.empty_like(out)
        with torch.no_grad():
            inp[:, :c1] = out[:, :c1]
        inp.requires_grad_()
        t, s = self._params(inp[:, :c1].clone(), cond)
        with torch.no_grad():
            o2 = out[:, c1:]
            if forward:  # out = forward(inp): inp2 = out2 / s - t
                inp[:, c1:] = o2 - t if s is None else o2 / s - t
            else:  # out = inverse(inp): inp2 = (out2 + t) * s
                inp[:, c1:] = o2 + t if s is None else (o2 + t) * s
        i1, i2 = inp[:, :c1], inp[:, c1:]
        if forward:
            o2g = i2 + t if s is None else (i2 + t) * s
        else:
            o2g = i2 - t if s is None else i2 / s - t
        graph = torch.cat([i1, o2g], dim=1)
        ld = None
        if logdet:
            ld = self._logdet(s, out) if forward else -self._logdet(s, out)
        return inp, graph, ld

    def rebuild(self, y: Tensor, *cond: Tensor, logdet: bool = False):
        """Fused rebuild: ``(x, forward(x) with graph, logdet with graph or None)`` from ``y``."""
        return self._fused(y, cond, logdet, forward=True)

    def rebuild_inverse(self, x: Tensor, *cond: Tensor, logdet: bool = False):
        """Fused rebuild of the inverse map (used by ``Inverse(coupling)``)."""
        return self._fused(x, cond, logdet, forward=False)

    def extra_repr(self) -> str:
        inj = f", inject_channels={self.inject_channels}" if self.inject_channels else ""
        return f"channels={self.channels}, cond_channels={self.cond_channels}{inj}"


class AffineCoupling(_Coupling):
    """Glow's affine coupling: ``y2 = (x2 + t(x1)) * sigmoid(r(x1) + 2)``.

    Args:
        channels: channels ``C`` of the input ``(B, C, H, W)``, at least 2.
        hidden: hidden channels of the coupling network.
        cond_channels: channels of the conditioning tensors the network also reads (0: ignores cond).
        dropout: dropout in the coupling network.
        net: a network of your own mapping ``C // 2 + cond_channels`` to ``2 * (C - C // 2)`` channels.
        inject_channels: channels of a conditioning tensor (the last cond tensor, at the input's height and
            width) added to the first hidden layer through a zero-initialised 1x1 convolution (0: none).
        scale_min: lower bound of the scale, ``s = scale_min + (1 - scale_min) sigmoid(r + 2)``. The
            inverse divides by ``s``, so a flow whose scales shrink towards 0 (as a Glow trained on clean
            images does for noise-like inputs) amplifies float32 rounding by ``1/s`` per coupling and its
            inverse can overflow; ``scale_min > 0`` bounds that factor by ``1/scale_min`` (Behrmann et al.,
            "Understanding and mitigating exploding inverses in invertible neural networks", 2021).
            0 is Glow's original.
    """

    affine = True


class AdditiveCoupling(_Coupling):
    """Additive (NICE) coupling: ``y2 = x2 + t(x1)``; volume preserving.

    Args: as :class:`AffineCoupling`; ``net`` maps ``C // 2 + cond_channels`` to ``C - C // 2`` channels.
    """

    affine = False
    volume_preserving = True
