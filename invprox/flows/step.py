"""One Glow flow step as one engine block: ActNorm -> invertible 1x1 convolution -> coupling.

The engine's cost per block (its state capture, graph walk and vector-Jacobian product) is paid once per
step instead of three times, and both directions rebuild with one pass of the coupling network:

* ``rebuild_inverse`` (the step used as ``g = f^-1``, as a solver's fold does): the coupling's known half
  gives the network's input at once; the step's input is filled in and the whole inverse recorded from it
  in one graph.
* ``rebuild`` (the step used as ``f``): the network's input is a function of the step's input, which is
  not known before the network has run. The network runs once with a graph on a leaf copy of that half;
  :class:`_StepVJP` then takes the vector-Jacobian product in two stages (through the coupling to the
  coupling's input, then through the two linear layers to the step's input). Activation memory stays one
  step deep.

The 1x1 convolution's matrix and its inverse are computed once per parameter update where no graph is
recorded (:meth:`~invprox.flows.layers.InvConv1x1.matrix`).

A conditional step (``cond_channels > 0``) reads the last cond tensor, an image of ``cond_channels``
channels at ``cond_factor`` times the step's height and width; space-to-depth brings it to the step's
resolution, and the coupling adds it to its network's first hidden layer through a zero-initialised 1x1
convolution (``inject_channels`` of :class:`~invprox.flows.AffineCoupling`).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..core.block import InvertibleModule
from .coupling import AdditiveCoupling, AffineCoupling, _Coupling
from .layers import ActNorm, ChannelRange, InvConv1x1, SplitPrior, Squeeze, Unsqueeze

__all__ = ["GlowStep", "PARAMETER_KINDS", "build_glow_blocks", "level_step_counts", "parameters_by_kind",
           "upgrade_step_layout"]

_COUPLINGS = {"affine": AffineCoupling, "additive": AdditiveCoupling}


class GlowStep(InvertibleModule):
    """ActNorm, LU-parametrised 1x1 convolution and coupling on the leading ``channels`` channels.

    Channels beyond ``channels`` pass through unchanged (the multi-scale Glow keeps its whole latent in
    one tensor). ``log|det|`` is the sum of the three layers'.

    Args:
        channels: channels the step acts on (at least 2).
        hidden: hidden channels of the coupling network.
        coupling: ``"affine"`` or ``"additive"``.
        scale_min: lower bound of the affine coupling's scale (see :class:`AffineCoupling`).
        generator: CPU generator for the 1x1 convolution's random rotation.
        cond_channels: channels of a conditioning image (the last cond tensor); 0: unconditional.
        cond_factor: how many times larger the conditioning image's height and width are than the step's
            input's (``2**(l + 1)`` at level ``l`` of a Glow).
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        coupling: str = "affine",
        scale_min: float = 0.0,
        generator: Optional[torch.Generator] = None,
        cond_channels: int = 0,
        cond_factor: int = 1,
    ):
        super().__init__()
        if coupling not in _COUPLINGS:
            raise ValueError(f"coupling must be one of {tuple(_COUPLINGS)}, got {coupling!r}")
        if cond_channels < 0 or cond_factor < 1:
            raise ValueError(f"cond_channels must be >= 0 and cond_factor >= 1, got {cond_channels}, "
                             f"{cond_factor}")
        self.channels = channels
        self.cond_channels, self.cond_factor = int(cond_channels), int(cond_factor)
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv1x1(channels, generator=generator)
        kw = {"scale_min": scale_min} if coupling == "affine" else {}
        inject = cond_channels * cond_factor**2
        self.coupling: _Coupling = _COUPLINGS[coupling](channels, hidden=hidden, inject_channels=inject, **kw)
        self.draws_random = self.coupling.draws_random
        self.self_contained = self.coupling.self_contained
        self.uses_cond = cond_channels > 0

    def _cond(self, x: Tensor, cond: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """The coupling's cond: the last cond tensor brought to ``x``'s resolution (conditional steps)."""
        if not self.cond_channels:
            return ()
        c = cond[-1] if cond else None
        f = self.cond_factor
        want = (x.shape[0], self.cond_channels, x.shape[2] * f, x.shape[3] * f)
        if c is None or tuple(c.shape) != want:
            got = "nothing" if c is None else f"shape {tuple(c.shape)}"
            raise ValueError(f"this conditional GlowStep needs a conditioning image of shape {want} as its "
                             f"last cond tensor, got {got}")
        return (F.pixel_unshuffle(c, f) if f > 1 else c,)

    def _split(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        if x.dim() != 4 or x.shape[1] < self.channels:
            raise ValueError(
                f"GlowStep({self.channels}) expects input of shape (B, >= {self.channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        if x.shape[1] == self.channels:
            return x, None
        return x[:, : self.channels], x[:, self.channels :]

    @staticmethod
    def _join(a: Tensor, rest: Optional[Tensor]) -> Tensor:
        return a if rest is None else torch.cat([a, rest], 1)

    def forward_and_logdet(self, x: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        a, rest = self._split(x)
        c = self._cond(x, cond)
        h, ld1 = self.actnorm.forward_and_logdet(a)
        h, ld2 = self.invconv.forward_and_logdet(h)
        h, ld3 = self.coupling.forward_and_logdet(h, *c)
        return self._join(h, rest), ld1 + ld2 + ld3

    def forward(self, x: Tensor, *cond: Tensor) -> Tensor:
        a, rest = self._split(x)
        return self._join(self.coupling(self.invconv(self.actnorm(a)), *self._cond(x, cond)), rest)

    def inverse_and_logdet(self, y: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        b, rest = self._split(y)
        h, ld3 = self.coupling.inverse_and_logdet(b, *self._cond(y, cond))
        h, ld2 = self.invconv.inverse_and_logdet(h)
        h, ld1 = self.actnorm.inverse_and_logdet(h)
        return self._join(h, rest), ld1 + ld2 + ld3

    def inverse(self, y: Tensor, *cond: Tensor) -> Tensor:
        b, rest = self._split(y)
        h = self.coupling.inverse(b, *self._cond(y, cond))
        return self._join(self.actnorm.inverse(self.invconv.inverse(h)), rest)

    def _linear_params(self):
        """The parameters of the two linear layers (ActNorm, 1x1 conv), in the order _StepVJP takes them."""
        return [self.actnorm.loc, self.actnorm.log_scale, self.invconv.lower, self.invconv.upper,
                self.invconv.log_s]

    # -- fused rebuilds for the engine ---------------------------------------------------------------
    def rebuild(self, y: Tensor, *cond: Tensor, logdet: bool = False):
        """``(x, forward(x) with graph, logdet with graph or None)`` from the output ``y``, in one
        pass of the network."""
        b, rest = self._split(y)
        # the coupling: its input (a leaf) and its graph from one network pass on the known half
        u_leaf, yc, ldc = self.coupling._fused(b, self._cond(y, cond), logdet, forward=True)
        with torch.no_grad():
            a = self.actnorm.inverse(self.invconv.inverse(u_leaf.detach()))
        x_leaf = self._join(a, None if rest is None else rest.detach()).requires_grad_()
        lin, net = self._linear_params(), list(self.coupling.parameters())
        # the coupling's graph travels in a list: autograd must not see it as an input of the Function;
        # the conditioning image is an input (a gradient reaches it where it requires one)
        c = cond[-1:] if self.cond_channels else ()
        y_graph, ld = _StepVJP.apply(self, [u_leaf, yc, ldc], logdet, len(c), x_leaf, *c, *lin, *net)
        return x_leaf, y_graph, (ld if logdet else None)

    def rebuild_inverse(self, x: Tensor, *cond: Tensor, logdet: bool = False):
        """The same for the inverse map: ``(y, inverse(y) with graph, its logdet or None)`` from ``x``."""
        a, rest = self._split(x)
        c = self._cond(x, cond)
        cp, c1, n = self.coupling, self.coupling.c1, self.channels
        with torch.no_grad():
            u = self.invconv(self.actnorm(a))
        y_leaf = torch.empty_like(x)
        with torch.no_grad():
            y_leaf[:, :c1] = u[:, :c1]
            if rest is not None:
                y_leaf[:, n:] = rest
        y_leaf.requires_grad_()
        t, s = cp._params(y_leaf[:, :c1].clone(), c)
        with torch.no_grad():
            y_leaf[:, c1:n] = u[:, c1:] + t if s is None else (u[:, c1:] + t) * s
        y2 = y_leaf[:, c1:n]
        u_graph = torch.cat([y_leaf[:, :c1], y2 - t if s is None else y2 / s - t], 1)
        h, ld2 = self.invconv.inverse_and_logdet(u_graph)
        h, ld1 = self.actnorm.inverse_and_logdet(h)
        out = self._join(h, None if rest is None else y_leaf[:, n:])
        ld = None
        if logdet:
            ld = -cp._logdet(s, u_graph) + ld2 + ld1
        return y_leaf, out, ld

    def extra_repr(self) -> str:
        if not self.cond_channels:
            return f"channels={self.channels}"
        return f"channels={self.channels}, cond_channels={self.cond_channels}, cond_factor={self.cond_factor}"


#: the kinds of a Glow's trainable parameters (:func:`parameters_by_kind`)
PARAMETER_KINDS = ("coupling", "actnorm", "invconv", "split")


def parameters_by_kind(module: nn.Module) -> Dict[str, List[nn.Parameter]]:
    """The parameters of the Glow layers inside ``module`` by kind, each once, in module order:
    ``"coupling"`` (the flow steps' coupling layers: their networks, and an injected condition),
    ``"actnorm"``, ``"invconv"`` (the 1x1 convolutions) and ``"split"`` (the learned split priors, which are
    affine couplings too, but no step's)."""
    out: Dict[str, List[nn.Parameter]] = {k: [] for k in PARAMETER_KINDS}
    seen = set()
    for m in module.modules():
        if isinstance(m, SplitPrior):
            kind = "split"
        elif isinstance(m, (AffineCoupling, AdditiveCoupling)):
            kind = "coupling"
        elif isinstance(m, ActNorm):
            kind = "actnorm"
        elif isinstance(m, InvConv1x1):
            kind = "invconv"
        else:
            continue
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out[kind].append(p)
    return out


def parameters_by_level(blocks: Sequence[nn.Module]) -> List[List[nn.Parameter]]:
    """The parameters of a Glow's blocks (:meth:`~invprox.flows.Glow.flow_blocks`) by multi-scale level,
    each once: level ``l`` (0: the finest, as in :meth:`~invprox.flows.Glow.latent_levels`) holds the flow
    steps after its squeeze and the split prior that factors out its latents."""
    out: List[List[nn.Parameter]] = []
    seen = set()
    for b in blocks:
        if isinstance(b, Squeeze):
            out.append([])
        if not out:
            continue
        for p in b.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out[-1].append(p)
    return out


def level_step_counts(steps: Union[int, Sequence[int]], levels: int) -> List[int]:
    """The flow steps of each level: ``steps`` for every level (a positive int), or one count per level
    (non-negative ints, at least one step in all).

    Raises:
        ValueError: anything else.
    """
    if isinstance(steps, int) and not isinstance(steps, bool):
        if steps < 1:
            raise ValueError(f"steps must be a positive int or one count per level, got {steps!r}")
        return [steps] * levels
    counts = list(steps) if isinstance(steps, (list, tuple)) else []
    valid = all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts)
    if not valid or len(counts) != levels or sum(counts) < 1:
        raise ValueError(f"steps must be a positive int or {levels} non-negative counts (one per level, "
                         f"at least one step in all), got {steps!r}")
    return counts


def build_glow_blocks(
    in_channels: int,
    levels: int,
    steps: Union[int, Sequence[int]],
    hidden: int,
    coupling: str = "affine",
    seed: int = 0,
    scale_min: float = 0.0,
    cond_channels: int = 0,
) -> List[nn.Module]:
    """The blocks of a Glow flow (see the module docstring), in order.

    Args:
        in_channels: image channels ``C``.
        levels: multi-scale levels ``L`` (each squeezes once).
        steps: flow steps ``K`` per level, or one count per level (0: a level of its squeeze and split
            prior only, whose latents are its input).
        hidden: hidden channels of each coupling network.
        coupling: ``"affine"`` or ``"additive"``.
        seed: seed of the random rotations that initialise the 1x1 convolutions.
        scale_min: lower bound of the affine couplings' scale (see :class:`AffineCoupling`).
        cond_channels: channels of a conditioning image of the input's size that every step reads (the
            chain's last cond tensor; :class:`~invprox.flows.step.GlowStep`); 0: unconditional.
    """
    if coupling not in _COUPLINGS:
        raise ValueError(f"coupling must be one of {tuple(_COUPLINGS)}, got {coupling!r}")
    for name, v in (("in_channels", in_channels), ("levels", levels), ("hidden", hidden)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    per_level = level_step_counts(steps, levels)
    gen = torch.Generator().manual_seed(int(seed))
    blocks: List[nn.Module] = []
    total = active = in_channels
    for level in range(levels):
        blocks.append(Squeeze())
        total, active = 4 * total, 4 * active
        for _ in range(per_level[level]):
            blocks.append(GlowStep(active, hidden, coupling, scale_min, generator=gen,
                                   cond_channels=cond_channels, cond_factor=2 ** (level + 1)))
        if level < levels - 1:
            split = SplitPrior(active)
            blocks.append(split if active == total else ChannelRange(split, active))
            active //= 2
    blocks += [Unsqueeze() for _ in range(levels)]
    return blocks


class _StepVJP(torch.autograd.Function):
    """The graph of one Glow step's forward from its rebuilt input, taken in two stages.

    Inputs: the step, the coupling's input ``u_leaf`` and its graph ``yc`` (and log-det ``ldc``) from one
    network pass, the number (0 or 1) of conditioning tensors, ``x_leaf``, the conditioning tensor, and the
    parameters (linear layers', then the coupling's). Output: the step's output and log-det, values only;
    the backward differentiates the coupling's graph to ``u``, its parameters and the conditioning tensor,
    then recomputes ActNorm and the 1x1 convolution (cheap) from ``x`` and differentiates them.
    """

    @staticmethod
    def forward(ctx, step: GlowStep, held: list, logdet: bool, n_cond: int, x_leaf, *inputs):
        ctx.step, ctx.held, ctx.logdet, ctx.n_cond = step, held, logdet, n_cond
        ctx.cond = inputs[:n_cond]
        yc, ldc = held[1], held[2]
        ctx.save_for_backward(x_leaf)
        rest = x_leaf[:, step.channels :]
        y = step._join(yc.detach(), rest if rest.shape[1] else None)
        with torch.no_grad():
            ld = x_leaf.new_zeros(x_leaf.shape[0])
            if logdet:
                hw = x_leaf.shape[2] * x_leaf.shape[3]
                ld = ldc.detach() + hw * (step.actnorm.log_scale.sum() + step.invconv.log_s.sum())
        return y, ld

    @staticmethod
    def backward(ctx, g_y: Tensor, g_ld: Optional[Tensor]):
        (x_leaf,) = ctx.saved_tensors
        step, n, n_cond = ctx.step, ctx.step.channels, ctx.n_cond
        u_leaf, yc, ldc = ctx.held
        need_cond = [c for c, need in zip(ctx.cond, ctx.needs_input_grad[5 : 5 + n_cond]) if need]
        params = list(ctx.needs_input_grad[5 + n_cond :])
        lin_p = step._linear_params()
        n_lin = len(lin_p)
        net_p = list(step.coupling.parameters())
        use_ld = ctx.logdet and g_ld is not None
        with torch.enable_grad():
            # stage 1: the coupling, to its input and its network's parameters
            outs, gouts = [yc], [g_y[:, :n]]
            if use_ld and ldc is not None and ldc.requires_grad:
                outs.append(ldc)
                gouts.append(g_ld)
            net_t = [p for p, need in zip(net_p, params[n_lin :]) if need]
            g1 = torch.autograd.grad(outs, [u_leaf, *need_cond, *net_t], gouts, allow_unused=True)
            g_u = g1[0] if g1[0] is not None else torch.zeros_like(u_leaf)
            # stage 2: ActNorm and the 1x1 convolution, recomputed from the step's input
            a = x_leaf[:, :n].detach().requires_grad_()
            h, ld1 = step.actnorm.forward_and_logdet(a)
            u, ld2 = step.invconv.forward_and_logdet(h)
            outs, gouts = [u], [g_u]
            if use_ld:
                outs.append(ld1 + ld2)
                gouts.append(g_ld)
            lin_t = [p for p, need in zip(lin_p, params[: n_lin]) if need]
            g2 = torch.autograd.grad(outs, [a, *lin_t], gouts, allow_unused=True)
        g_x = g2[0] if x_leaf.shape[1] == n else torch.cat([g2[0], g_y[:, n:]], 1)
        it_lin, it_net = iter(g2[1:]), iter(g1[1:])
        out_cond = [next(it_net) if need else None for need in ctx.needs_input_grad[5 : 5 + n_cond]]
        out_lin = [next(it_lin) if need else None for need in params[: n_lin]]
        out_net = [next(it_net) if need else None for need in params[n_lin :]]
        ctx.held.clear()
        ctx.cond = ()
        return (None, None, None, None, g_x, *out_cond, *out_lin, *out_net)


def upgrade_step_layout(blocks: Sequence[nn.Module], state_dict: dict, head: str) -> None:
    """Rename, in place, the keys of a flow saved before a Glow step was one block (ActNorm, 1x1 conv and
    coupling as three blocks, wrapped in ``ChannelRange`` below the first level) to the layout of
    ``blocks`` (one :class:`GlowStep` per step); ``head`` is the prefix of the blocks' keys. Keys of the
    current layout are left alone."""
    if not any(k.startswith(head + "1.loc") or k.startswith(head + "1.block.loc") for k in state_dict):
        return
    rename = {}
    old = new = 0
    for block in blocks:
        if isinstance(block, GlowStep):
            for part in ("actnorm", "invconv", "coupling"):
                rename[f"{old}.block."] = f"{new}.{part}."
                rename[f"{old}."] = f"{new}.{part}."
                old += 1
        else:
            rename[f"{old}."] = f"{new}."
            old += 1
        new += 1
    moved = {}
    for key in [k for k in state_dict if k.startswith(head)]:
        rest = key[len(head):]
        for src in (rest.split(".", 2)[0] + ".block.", rest.split(".", 1)[0] + "."):
            if rest.startswith(src) and src in rename:
                moved[head + rename[src] + rest[len(src):]] = state_dict.pop(key)
                break
    state_dict.update(moved)
