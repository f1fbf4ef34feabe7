"""The unrolled proximal-gradient solver with normalizing-flow prox (Wei et al., ICASSP 2022 / IEEE TSP).

One fold ``k`` maps ``x`` (flow space, ``x01 - 0.5``) to::

    x~ = x - mu_k A^T (A x - y~)       data consistency, y~ = y - A(1/2) (the measurement in flow space)
    z~ = f_k(x~)                       into the latent space of the k-th Glow
    z  = shrink_k(z~)                  z~_l / (1 + lambda_{k,l}) per latent level l (Gaussian prior; one
                                       lambda_k with lam_per="scalar") or soft thresholding (Laplace)
    x' = g_k(z) = f_k^-1(z)            back to image space

and all K folds run as ONE :class:`invprox.InvertibleChain` of the folds' blocks (DC, every Glow layer,
the shrinkage, every inverse Glow layer), with the measurement as conditioning input. With ``cond_y``,
``f_k`` and ``g_k`` are conditional Glows that also read ``A^T y~`` (the measurement in image space) in
every coupling network: a fold can then take detail from ``y`` without taking its noise through the
data step (``g_k(shrink_k(f_k(., c)), c)`` is still invertible in ``x``, for every ``c``). The backward pass
rebuilds each layer's input by inversion, so activation memory does not grow with K (or with the Glow's
depth). The Laplace shrinkage is not invertible: the engine keeps its input (one image per fold).

The start is the smooth estimate ``x_0 = argmin ||A x - y||^2 + alpha ||D x||^2`` (:mod:`.start`), or with
``start="mode"`` the seed paper's ``x_0 = g_1(0)``, the most likely image of the (first) flow; a pre-trained
Glow's fold is no denoiser before training, so :meth:`FlowProxSolver.calibrate` sets the start, ``mu_k``
and ``lambda_{k,l}`` from training pairs (:mod:`.calibrate`). Every fold ends with the
shrinkage and ``g_k`` (the fold of DESIGN.md; the paper's eq. 11 would skip the last shrinkage, which makes
the last fold's ``g_K(f_K(.))`` an identity).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..core.block import Inverse
from ..core.chain import ChainOwner, InvertibleChain
from ..physics import DataConsistency
from ._physics import SwappablePhysics
from .flow_groups import FlowParameterGroups
from .shrinkage import LatentShrinkage, SoftThreshold
from .start import SmoothStart

# LatentShrinkage, SoftThreshold live in invprox.solvers.shrinkage (and can still be imported from here)
__all__ = ["FlowProxSolver"]


def _flow_blocks(flow: nn.Module) -> List[nn.Module]:
    """The engine blocks of ``f``: ``flow.flow_blocks()`` (a Glow), or the blocks of an InvertibleChain."""
    if callable(getattr(flow, "flow_blocks", None)):
        return list(flow.flow_blocks())
    if isinstance(flow, InvertibleChain):
        return list(flow.blocks)
    raise TypeError(
        f"flow must be an invertible flow: an invprox.InvertibleChain of blocks, or a module with "
        f"flow_blocks() and inverse() such as invprox.flows.Glow; got {type(flow).__name__}"
    )


class FlowProxSolver(FlowParameterGroups, ChainOwner, SwappablePhysics):
    """K folds of (DC, Glow, latent shrinkage, inverse Glow) trained end to end through the engine.

    Args:
        flow: a (pre-trained) flow ``f`` from image to latent space that follows the block protocol:
            an :class:`invprox.flows.Glow`, any module with ``flow_blocks()`` and ``inverse()``, or an
            :class:`invprox.InvertibleChain` of blocks. It is copied into every fold ("untied"), or shared
            by all folds when ``tied``. ``lam_per="level"`` needs its ``latent_levels()``.
        physics: the default forward operator (``A``, ``A_adjoint``), e.g. from
            :func:`invprox.physics.make_physics`. A call may pass another, ``solver(y, op)``, which is
            used for that call only (deepinv's ``forward(y, physics)``); ``solver.physics = op`` changes
            the default.
        K: number of folds.
        tied: share one flow between all folds.
        shrinkage: ``"gaussian"`` (``z / (1 + lambda)``) or ``"laplace"`` (soft thresholding); default:
            the flow's prior.
        mu_init: initial step ``mu_k`` as a fraction of ``1 / ||A||^2``.
        lam_init: initial ``lambda_k``.
        lam_per: ``"level"`` (default): one ``lambda_{k,l}`` per multi-scale level ``l`` of the latent
            (:meth:`invprox.flows.Glow.latent_levels`); ``"channel"``: one per channel of the flow's
            internal tensor where it leaves the flow (:meth:`invprox.flows.Glow.latent_channels`, 66 for
            a 3-level Glow of RGB images), so training can route noise to channels it shrinks and keep
            detail in others (the calibration sets one value per level); ``"scalar"``: one
            ``lambda_k`` per fold (the seed paper's model).
        start: ``"smooth"`` (default): ``x_0`` is :class:`~invprox.solvers.start.SmoothStart`, a
            smoothness-regularised least-squares estimate from ``y``; ``"mode"``: ``x_0 = g_1(0)``, the
            flow's most likely image (the seed paper's start). :meth:`calibrate` sets the start, ``mu_k``
            and ``lambda_k`` from a few training pairs.
        keep_every: the engine's drift policy, counted in blocks of the flat chain (see
            :class:`invprox.InvertibleChain`). ``"fold"`` (default) keeps each fold's input, one image per
            fold, so the data-consistency step is never inverted: its inverse multiplies rounding errors
            by ``1 / (1 - mu)`` per fold (x2 at ``mu = 1/2``), and pure inversion (``None``) of a
            32-fold denoiser then gives NaN gradients in float32 (``benchmarks/SOLVER_K.md``).
        check: the engine's drift check (``None``, ``"warn"``, ``"raise"``, ``"fallback"``).
        memory_efficient: ``False`` trains with standard autograd (for comparison).
        cond_y: every coupling network of every fold's Glow also reads ``c = A^T y~`` (``y~``: the
            measurement in flow space) through a zero-initialised 1x1 convolution
            (:meth:`invprox.flows.Glow.with_condition`): until trained, each fold computes what it computes
            without it. Needs a Glow with ``with_condition``; a Glow that is already conditional
            (``cond_channels``, e.g. a trained solver's fold) switches it on.
        lam_y: the shrinkage's ``lambda`` becomes a map over the latent read from ``c = A^T y~`` by a small
            convolutional network that starts at zero (:class:`~invprox.solvers.shrinkage.LatentShrinkage`
            with ``cond_channels``): the fold can shrink each region by what the measurement shows there.
            Gaussian shrinkage with ``lam_per`` ``"level"`` or ``"channel"`` only.
        cond_net: with ``cond_y``, the coupling networks read ``n`` more channels besides ``c``: features
            ``h(c)`` of a small convolutional network (three 3x3 convolutions, ``cond_hidden`` channels),
            computed once per call and shared by every fold, as in conditional invertible networks
            (Ardizzone et al. 2019). Their injection starts at zero, so the solver starts as without them;
            ``h`` trains with the couplings (:meth:`coupling_parameters`). Implies ``cond_y``; not with
            ``lam_y``.
        cond_hidden: hidden channels of ``h``.
        untie_inverse: each fold's ``g_k`` is the inverse of its own copy of the flow instead of ``f_k^-1``
            (:attr:`inverse_flows`): both start as the pre-trained flow, so the solver starts exactly as
            with ``g_k = f_k^-1``, and then train apart: twice the flow parameters for the same arithmetic
            per step. A fold ``g_k(shrink_k(f_k(.)))`` is then no longer the prox of a latent prior but
            still invertible (the engine trains it as before), and a level the shrinkage leaves alone no
            longer cancels between ``f_k`` and ``g_k``.

    Shapes:
        ``y``: the measurement, shape of ``physics.A(x)``; output: ``(B, C, H, W)`` in image space
        ``[0, 1]`` (not clamped; clamp for display and metrics).
    """

    def __init__(
        self,
        flow: nn.Module,
        physics: Any,
        K: int = 4,
        tied: bool = False,
        shrinkage: Optional[str] = None,
        mu_init: float = 0.5,
        lam_init: float = 0.1,
        lam_per: str = "level",
        start: str = "smooth",
        keep_every: Union[int, str, None] = "fold",
        check: Optional[str] = None,
        memory_efficient: bool = True,
        cond_y: bool = False,
        lam_y: bool = False,
        cond_net: int = 0,
        cond_hidden: int = 32,
        untie_inverse: bool = False,
    ):
        super().__init__()
        if not isinstance(K, int) or K < 1:
            raise ValueError(f"K must be a positive int, got {K!r}")
        _flow_blocks(flow)  # raises TypeError for anything that is not an invertible flow
        for name, v, low in (("cond_net", cond_net, 0), ("cond_hidden", cond_hidden, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if cond_net and lam_y:
            raise ValueError("cond_net and lam_y cannot be combined (the shrinkage's map reads A^T y alone)")
        # a conditional Glow reads A^T y~ (and the features of cond_net)
        cond_y = cond_y or bool(cond_net) or bool(getattr(flow, "cond_channels", 0))
        if cond_y:
            if not callable(getattr(flow, "with_condition", None)):
                raise TypeError(f"cond_y needs a flow with with_condition() (an invprox.flows.Glow); "
                                f"{type(flow).__name__} has none")
            flow = flow.with_condition(flow.in_channels + cond_net)
        self.cond_y = bool(cond_y)
        #: ``h`` of ``cond_net`` (its features join ``A^T y~`` as the Glows' conditioning image), or ``None``
        self.cond_net: Optional[nn.Sequential] = None
        if cond_net:
            c = flow.in_channels
            self.cond_net = nn.Sequential(
                nn.Conv2d(c, cond_hidden, 3, padding=1), nn.ReLU(),
                nn.Conv2d(cond_hidden, cond_hidden, 3, padding=1), nn.ReLU(),
                nn.Conv2d(cond_hidden, cond_net, 3, padding=1))
        shrinkage = shrinkage or getattr(flow, "prior", "gaussian")
        if shrinkage not in ("gaussian", "laplace"):
            raise ValueError(f"shrinkage must be 'gaussian' or 'laplace', got {shrinkage!r}")
        if lam_per not in ("level", "channel", "scalar"):
            raise ValueError(f"lam_per must be 'level', 'channel' or 'scalar', got {lam_per!r}")
        if start not in ("smooth", "mode"):
            raise ValueError(f"start must be 'smooth' or 'mode', got {start!r}")
        levels = None
        #: the multi-scale level of each lambda group where there are several groups per level
        #: (``lam_per="channel"``; the calibration chooses one value per level), else ``None``
        self.lam_group_level: Optional[List[int]] = None
        if lam_per != "scalar":
            need = "latent_levels" if lam_per == "level" else "latent_channels"
            if not callable(getattr(flow, need, None)):
                raise TypeError(f"lam_per={lam_per!r} needs a flow with {need}() (a multi-scale Glow); "
                                f"{type(flow).__name__} has none: use lam_per='scalar'")
            levels = getattr(flow, need)()
            if lam_per == "channel":
                lv = flow.latent_levels()
                self.lam_group_level = [int(lv[levels == g][0]) for g in range(int(levels.max()) + 1)]
        self.K, self.tied, self.shrinkage, self.lam_per = K, tied, shrinkage, lam_per
        self.smooth_start = SmoothStart() if start == "smooth" else None
        hw, c = getattr(flow, "image_size", None), getattr(flow, "in_channels", None)
        #: ``(C, H, W)`` of the flow's images, or ``None`` (then taken from ``A^T y`` on every call)
        self.image_shape = (c, *hw) if hw is not None and c is not None else None
        flows = [flow] * K if tied else [copy.deepcopy(flow) for _ in range(K)]
        self.flows = nn.ModuleList(flows[:1] if tied else flows)
        #: with ``untie_inverse``, the flows whose inverses are the folds' ``g_k`` (one when ``tied``), else
        #: ``None`` (``g_k = f_k^-1``)
        self.inverse_flows: Optional[nn.ModuleList] = None
        if untie_inverse:
            self.inverse_flows = nn.ModuleList(copy.deepcopy(f) for f in self.flows)
        self.dc = nn.ModuleList(DataConsistency(physics, mu_init=mu_init) for _ in range(K))
        shrink = LatentShrinkage if shrinkage == "gaussian" else SoftThreshold
        if lam_y and (shrinkage != "gaussian" or levels is None):
            raise ValueError("lam_y needs Gaussian shrinkage and lam_per 'level' or 'channel'")
        self.lam_y = bool(lam_y)
        kw = {"cond_channels": flow.in_channels} if lam_y else {}
        self.shrink = nn.ModuleList(shrink(lam_init, levels, **kw) for _ in range(K))
        self.physics = physics
        blocks: List[nn.Module] = []
        for k in range(K):
            f, g = self.fold_flows(k)
            gb = _flow_blocks(g)
            blocks += [self.dc[k], *_flow_blocks(f), self.shrink[k], *[Inverse(b) for b in reversed(gb)]]
        if keep_every == "fold":
            keep_every = len(blocks) // K
        elif isinstance(keep_every, str):
            raise ValueError(f"keep_every must be 'fold', a positive int or None, got {keep_every!r}")
        self.chain = InvertibleChain(
            blocks, keep_every=keep_every, check=check, memory_efficient=memory_efficient
        )
        # every tensor of ``chain`` is also one of flows.*, dc.* or shrink.*: a state dict loads through
        # those names only, so one saved with an earlier block layout of the flow still loads
        self._register_load_state_dict_pre_hook(self._drop_chain_aliases)
        self.register_load_state_dict_post_hook(FlowProxSolver._forget_chain_aliases)
        self._alias_prefixes: List[str] = []

    def _drop_chain_aliases(self, state_dict, prefix, *args) -> None:
        head = prefix + "chain."
        for key in [k for k in state_dict if k.startswith(head)]:
            del state_dict[key]
        self._alias_prefixes.append(head)

    @staticmethod
    def _forget_chain_aliases(module: FlowProxSolver, incompatible) -> None:
        heads, module._alias_prefixes = tuple(module._alias_prefixes), []
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith(heads)]

    def fold_flows(self, k: int) -> Tuple[nn.Module, nn.Module]:
        """``(f, h)`` of fold ``k``: its ``f_k`` is ``f``, its ``g_k`` is ``h.inverse`` (``h`` is ``f`` unless
        ``untie_inverse``)."""
        i = 0 if self.tied else k
        return self.flows[i], (self.flows if self.inverse_flows is None else self.inverse_flows)[i]

    def fold_blocks(self) -> int:
        """Number of engine blocks per fold."""
        return len(self.chain) // self.K

    def start(self, y: Tensor, physics: Any = None) -> Tensor:
        """``x_0`` in flow space (see ``start``), shape ``(B, C, H, W)``; depends on ``y`` only."""
        op = self.physics if physics is None else physics
        if self.smooth_start is not None:
            return self.smooth_start(y, op) - 0.5
        with torch.no_grad():
            shape, g = self._image_shape(y, op), self.fold_flows(0)[1]  # g_1 = g.inverse
            if self.cond_y:  # the mode of the conditional flow depends on y
                z = torch.zeros((y.shape[0], *shape), dtype=y.dtype, device=y.device)
                return g.inverse(z, *self.fold_conds(self.flow_measurement(y, op), op)[0])
            z = torch.zeros((1, *shape), dtype=y.dtype, device=y.device)
            return g.inverse(z).expand(y.shape[0], *shape).contiguous()

    def _image_shape(self, y: Tensor, physics: Any = None):
        if self.image_shape is not None:
            return self.image_shape
        with torch.no_grad():
            return tuple((self.physics if physics is None else physics).A_adjoint(y[:1]).shape[1:])

    def calibrate(self, y: Tensor, x: Tensor, physics: Any = None, **grids: Any) -> Dict[str, Any]:
        """Set the start, ``mu_k`` and ``lambda_k`` from training pairs, without backprop.

        See :func:`invprox.solvers.calibrate.calibrate_flow_solver` (``grids``: its grid arguments).
        """
        from .calibrate import calibrate_flow_solver

        return calibrate_flow_solver(self, y, x, physics, **grids)

    def forward(self, y: Tensor, physics: Any = None) -> Tensor:
        """Reconstruct from the measurement ``y`` (with ``physics`` for this call, default the solver's);
        returns the image estimate in ``[0, 1]`` space."""
        if not isinstance(y, Tensor) or y.dim() < 2:
            raise ValueError(f"y must be a batched measurement tensor, got {type(y).__name__}")
        op = self.physics if physics is None else physics
        y_flow = self.flow_measurement(y, op)
        return self.chain_for(op)(self.start(y, op), y_flow, *self.cond_image(y_flow, op)) + 0.5

    def cond_image(self, y_flow: Tensor, physics: Any = None) -> Tuple[Tensor, ...]:
        """``(A^T y~,)``, the measurement in image space, where the Glows (``cond_y``) or the shrinkages
        (``lam_y``) read it, with ``cond_net``'s features of it as further channels, else ``()``; the
        chain's last cond tensor."""
        if not (self.cond_y or self.lam_y):
            return ()
        c = (self.physics if physics is None else physics).A_adjoint(y_flow)
        return (c,) if self.cond_net is None else (torch.cat([c, self.cond_net(c)], 1),)

    def fold_conds(self, y_flow: Tensor, physics: Any = None
                   ) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
        """What the Glows and what the shrinkages read besides their input: ``(A^T y~,)`` for the Glows
        with ``cond_y`` (with ``cond_net``'s features) and for the shrinkages with ``lam_y``, else ``()``
        (``A^T`` applied once)."""
        c = self.cond_image(y_flow, physics)
        return (c if self.cond_y else ()), (c if self.lam_y else ())

    def fold(self, k: int, x: Tensor, y_flow: Tensor, physics: Any = None) -> Tensor:
        """One fold outside the engine's chain: ``g_k(shrink_k(f_k(x - mu_k A^T (A x - y~))))``, flow space
        in and out (``y_flow``: :meth:`flow_measurement`; ``A`` of ``physics``, default the solver's)."""
        f, g = self.fold_flows(k)
        dc = self.dc[k] if physics is None else self.dc[k].bind(physics)
        fc, sc = self.fold_conds(y_flow, physics)
        return g.inverse(self.shrink[k](f(dc(x, y_flow), *fc), *sc), *fc)

    @torch.no_grad()
    def iterates(self, y: Tensor, physics: Any = None) -> List[Tensor]:
        """The image after each fold, ``[x_1, ..., x_K]`` in ``[0, 1]`` space (``x_K`` is the output), without
        gradients: to see what each fold does."""
        op = self.physics if physics is None else physics
        cur, y_flow, out = self.start(y, op), self.flow_measurement(y, op), []
        for k in range(self.K):
            cur = self.fold(k, cur, y_flow, op)
            out.append(cur + 0.5)
        return out

    def chain_for(self, physics: Any) -> InvertibleChain:
        """The solver's chain with its data-consistency blocks bound to ``physics`` (views sharing their
        parameters, see :meth:`DataConsistency.bind`); ``self.chain`` itself for the default operator."""
        if physics is self.physics:
            return self.chain
        base = self.chain
        key = tuple(id(b) for b in base.blocks)
        cached = self.__dict__.get("_bound_chain")
        if cached is None or cached[0] is not physics or cached[1] != key:
            dcs = {id(dc): dc.bind(physics) for dc in self.dc}
            bound = InvertibleChain([dcs.get(id(b), b) for b in base.blocks])
            cached = (physics, key, bound)
            self.__dict__["_bound_chain"] = cached  # not a submodule: its parameters are the solver's
        bound = cached[2]
        for attr in ("keep_every", "check", "check_tol", "preserve_rng_state", "memory_efficient",
                     "check_finite"):
            setattr(bound, attr, getattr(base, attr))
        return bound

    def flow_measurement(self, y: Tensor, physics: Any = None) -> Tensor:
        """``y - A(1/2)``: the measurement of flow-space images (``x01 - 0.5``), the DC blocks' ``cond``.

        Raises:
            ValueError: ``y`` does not have the shape the operator gives the solver's images.
        """
        op = self.physics if physics is None else physics
        half = torch.full((y.shape[0], *self._image_shape(y, op)), 0.5, dtype=y.dtype, device=y.device)
        a_half = op.A(half)
        if a_half.shape[1:] != y.shape[1:]:
            raise ValueError(
                f"measurement of shape {tuple(y.shape)} does not fit the operator: for images of shape "
                f"{tuple(half.shape)} it gives measurements of shape {tuple(a_half.shape)}"
            )
        return y - a_half
