"""Glow (Kingma & Dhariwal 2018): a multi-scale flow whose latent has the shape of the image.

Spaces and conventions
----------------------
* **Image space** ``x01``: images in ``[0, 1]``, shape ``(B, C, H, W)`` (what data sets return).
* **Flow space** ``x = preprocess(x01) = x01 - 0.5``, in ``[-0.5, 0.5]``: what the flow maps. ``f`` is
  :meth:`Glow.forward`, ``g = f^-1`` is :meth:`Glow.inverse`, and ``postprocess(x) = clamp(x + 0.5, 0, 1)``.
* **Latent space** ``z = f(x)``: the same shape ``(B, C, H, W)`` as ``x``; under the model ``z`` is exactly
  i.i.d. ``N(0, 1)`` (or a unit-variance Laplace), so ``z / (1 + lam)`` is exactly the proximal step of
  ``lam * (-log p_Z)`` (:meth:`Glow.prox`). Every split prior is an affine map inside the flow
  (:class:`~invprox.flows.layers.SplitPrior`), so there is no separate latent density to evaluate.

An unrolled solver uses ``x = preprocess(x01)``, ``z = f(x)``, ``z' = prox(z, lam)``, ``x' = g(z')`` and
``postprocess`` (or ``+ 0.5``) to return to ``[0, 1]``.

Architecture (all in one tensor)
--------------------------------
Each of the ``levels`` levels squeezes the *whole* tensor (space-to-depth 2x2, which maps the leading
channels to leading channels), runs ``steps`` flow steps (:class:`~invprox.flows.step.GlowStep`: ActNorm ->
invertible 1x1 conv -> coupling, one engine block each) on the leading ``active`` channels, and, except at
the last level, applies a :class:`SplitPrior` that normalises the second half of the active channels, which
later levels leave alone. At the end the tensor is un-squeezed ``levels`` times back to ``(B, C, H, W)``.
Channels active at level ``l``: ``C * 2**(l + 2)``.
The whole flow is one :class:`invprox.InvertibleChain`, so training is memory-efficient.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..core.block import Inverse, InvertibleModule
from ..core.chain import ChainOwner, InvertibleChain
from .layers import ChannelRange, SplitPrior, Squeeze, Unsqueeze, squeeze2d, unsqueeze2d
from .prior import PRIORS, prior_log_prob, prior_prox, prior_sample
from .step import build_glow_blocks, upgrade_step_layout

__all__ = ["Glow", "build_glow_blocks"]

#: the tag of a saved flow, in the scheme of every invprox file ("invprox.<kind>/<version>": solver,
#: train_solver, pretrain); files written before carry the old tag and still load
_FORMAT = "invprox.glow/1"
_OLD_FORMATS = ("invprox.flows.Glow",)


class Glow(ChainOwner, InvertibleModule):
    """Glow flow ``f`` from flow space ``x`` (``x01 - 0.5``) to a latent ``z`` of the same shape.

    Args:
        in_channels: image channels, 1 or 3 (any positive number works).
        image_size: ``H`` (square) or ``(H, W)``, each divisible by ``2**levels``; used by :meth:`sample`
            and :meth:`mode`. :meth:`forward` accepts any size divisible by ``2**levels``.
        levels: multi-scale levels.
        steps: flow steps (ActNorm, 1x1 conv, coupling) per level, or one count per level (0: none).
        hidden: hidden channels of the coupling networks.
        coupling: ``"affine"`` (sigmoid scale) or ``"additive"``.
        prior: latent prior, ``"gaussian"`` or ``"laplace"`` (unit variance).
        n_bits: bits per colour channel of the data model (5 or 8 in the Glow paper); enters
            :meth:`nll_bpd` only.
        memory_efficient: train through the engine (activation memory one block deep); ``False`` uses
            standard autograd.
        keep_every: the engine's drift policy (keep every ``n``-th block input); ``None``: pure inversion.
        check: the engine's drift check (``None``, "warn", "raise", "fallback"); needs ``keep_every``.
        seed: seed of the random rotations initialising the 1x1 convolutions (coupling networks use the
            global RNG).
        scale_min: lower bound of the affine couplings' scale. Glow's original is 0; a flow used as a
            proximal operator meets noisy, off-manifold inputs, where an unbounded scale lets the inverse
            overflow in float32 (see :class:`~invprox.flows.AffineCoupling`). 0.5 bounds each coupling's
            error amplification by 2.

    Attributes:
        chain: the :class:`invprox.InvertibleChain` of all blocks; ``chain.blocks`` can be placed in a
            larger chain (an unrolled solver) as they are, and ``Inverse(b)`` of them gives ``g``.
        config: the constructor arguments (what :meth:`save` stores).

    Example:
        >>> import torch
        >>> glow = Glow(in_channels=1, image_size=8, levels=2, steps=1, hidden=8)
        >>> x = glow.preprocess(torch.rand(2, 1, 8, 8))
        >>> z = glow(x); z.shape
        torch.Size([2, 1, 8, 8])
        >>> bool((glow.inverse(z) - x).abs().max() < 1e-5)
        True
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: Union[int, Sequence[int]] = 32,
        levels: int = 3,
        steps: int = 8,
        hidden: int = 128,
        coupling: str = "affine",
        prior: str = "gaussian",
        n_bits: int = 8,
        memory_efficient: bool = True,
        keep_every: Optional[int] = None,
        check: Optional[str] = None,
        seed: int = 0,
        scale_min: float = 0.0,
        cond_channels: int = 0,
    ):
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if not isinstance(n_bits, int) or not 1 <= n_bits <= 8:
            raise ValueError(f"n_bits must be an int in 1..8, got {n_bits!r}")
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        if len(hw) != 2 or any(s < 1 or s % (2**levels) for s in hw):
            raise ValueError(
                f"image_size {image_size!r} must be positive and divisible by 2**levels = {2**levels}"
            )
        self.config: Dict[str, Any] = dict(
            in_channels=in_channels, image_size=list(hw), levels=levels, hidden=hidden,
            steps=list(steps) if isinstance(steps, (list, tuple)) else steps,
            coupling=coupling, prior=prior, n_bits=n_bits, memory_efficient=memory_efficient,
            keep_every=keep_every, check=check, seed=seed, scale_min=scale_min,
        )
        if cond_channels:  # only a conditional Glow records it: unconditional configs stay as they were
            self.config["cond_channels"] = cond_channels
        self.cond_channels = cond_channels
        self.uses_cond = cond_channels > 0
        self.in_channels = in_channels
        self.image_size: Tuple[int, int] = hw
        self.levels = levels
        self.prior = prior
        self.n_bits = n_bits
        if not isinstance(cond_channels, int) or cond_channels < 0:
            raise ValueError(f"cond_channels must be a non-negative int, got {cond_channels!r}")
        blocks = build_glow_blocks(in_channels, levels, steps, hidden, coupling, seed, scale_min,
                                   cond_channels)
        self.chain = InvertibleChain(
            blocks, keep_every=keep_every, check=check, memory_efficient=memory_efficient
        )
        self._register_load_state_dict_pre_hook(self._upgrade_state_dict)

    def _upgrade_state_dict(self, state_dict, prefix, *args) -> None:
        upgrade_step_layout(self.chain.blocks, state_dict, prefix + "chain.blocks.")

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> Glow:
        """A fresh Glow from :attr:`config` (a dict of constructor arguments)."""
        return cls(**config)

    def with_condition(self, cond_channels: int) -> Glow:
        """A conditional copy: every step's coupling network also reads a conditioning image of
        ``cond_channels`` channels (``forward(x, c)``), so the copy computes exactly this Glow's ``f``
        and ``g`` whatever ``c`` until it is trained (:func:`invprox.flows.derive.condition_glow`)."""
        from .derive import condition_glow

        return condition_glow(self, cond_channels)

    def widened(self, hidden: int) -> Glow:
        """A copy whose coupling networks have ``hidden`` channels and that computes exactly this Glow's
        ``f`` and ``g`` until trained (:func:`invprox.flows.derive.widen_glow`)."""
        from .derive import widen_glow

        return widen_glow(self, hidden)

    def with_steps(self, steps: Sequence[int]) -> Glow:
        """A copy with the first ``steps[l]`` flow steps of each level ``l`` (another, cheaper flow where
        it drops any; :func:`invprox.flows.derive.truncate_glow`)."""
        from .derive import truncate_glow

        return truncate_glow(self, steps)

    def flow_blocks(self) -> List[nn.Module]:
        """The blocks of ``f`` in order (shared, not copied), to place in a larger chain."""
        return list(self.chain.blocks)

    def inverse_blocks(self) -> List[nn.Module]:
        """The blocks of ``g = f^-1`` in order: ``Inverse(b)`` of :meth:`flow_blocks` reversed (shared)."""
        return [Inverse(b) for b in reversed(self.chain.blocks)]

    def latent_levels(self) -> Tensor:
        """The multi-scale level of every latent entry, a long tensor of shape ``(C, H, W)``.

        Level ``l`` holds the entries normalised by the ``l``-th split prior (``l = 0``: split off first,
        the finest scale); the entries that pass all levels get the last index ``levels - 1``. Lets a
        solver shrink each scale by its own amount (``z_l / (1 + lambda_l)`` is the exact prox of a
        Gaussian prior with per-level weights).
        """
        return self._latent_labels(per_channel=False)

    def latent_channels(self) -> Tensor:
        """The channel of the flow's internal tensor that every latent entry comes from, numbered across
        levels (level 0's factored-out channels first), a long tensor of shape ``(C, H, W)``.

        Finer than :meth:`latent_levels` and, like it, the same at every position: a solver that shrinks
        each channel by its own amount (still the exact prox of a Gaussian prior, now with per-channel
        weights) lets its flow route noise to channels it shrinks and detail to channels it keeps.
        """
        return self._latent_labels(per_channel=True)

    def _latent_labels(self, per_channel: bool) -> Tensor:
        lab = torch.full((1, self.in_channels, *self.image_size), -1.0)
        label = 0
        for b in self.chain.blocks:
            if isinstance(b, Squeeze):
                lab = squeeze2d(lab)
            elif isinstance(b, Unsqueeze):
                label = self._label(lab, label, per_channel)  # what passed every level (once)
                lab = unsqueeze2d(lab)
            elif isinstance(b.block if isinstance(b, ChannelRange) else b, SplitPrior):
                n = b.channels if isinstance(b, ChannelRange) else lab.shape[1]
                label = self._label(lab[:, n // 2 : n], label, per_channel)
        return lab[0].long()

    @staticmethod
    def _label(part: Tensor, label: int, per_channel: bool) -> int:
        """Give the unlabelled channels of ``part`` (in place) the next label, or one label each."""
        free = [c for c in range(part.shape[1]) if bool((part[:, c] < 0).all())]
        for c in free:
            part[:, c] = label
            label += per_channel
        return label + (not per_channel and bool(free))

    def _set_memory_efficient(self, value: bool) -> None:  # ChainOwner's setter; the config follows
        self.chain.memory_efficient = value
        self.config["memory_efficient"] = value

    # -- spaces ----------------------------------------------------------------------------------------
    @staticmethod
    def preprocess(x01: Tensor) -> Tensor:
        """Image space ``[0, 1]`` to flow space: ``x01 - 0.5``."""
        return x01 - 0.5

    @staticmethod
    def postprocess(x: Tensor, clamp: bool = True) -> Tensor:
        """Flow space to image space: ``x + 0.5``, clamped to ``[0, 1]`` unless ``clamp=False``."""
        out = x + 0.5
        return out.clamp(0.0, 1.0) if clamp else out

    def _check_input(self, x: Tensor, cond: Sequence[Tensor] = ()) -> None:
        m = 2**self.levels
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2] % m or x.shape[3] % m:
            raise ValueError(
                f"Glow expects (B, {self.in_channels}, H, W) with H and W divisible by {m}, "
                f"got {tuple(x.shape)}"
            )
        if self.cond_channels:
            want = (x.shape[0], self.cond_channels, *x.shape[2:])
            if not cond or tuple(cond[-1].shape) != want:
                got = f"shape {tuple(cond[-1].shape)}" if cond else "none"
                raise ValueError(f"this Glow is conditional: pass a conditioning image of shape {want} "
                                 f"after the input, got {got}")

    # -- the flow --------------------------------------------------------------------------------------
    def forward(self, x: Tensor, *cond: Tensor) -> Tensor:
        """``z = f(x)``: flow space ``(B, C, H, W)`` to latent of the same shape (a conditional Glow:
        ``f(x, c)``, ``c`` its conditioning image)."""
        self._check_input(x, cond)
        return self.chain(x, *cond)

    def forward_and_logdet(self, x: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        """``(f(x), log|det df/dx|)``, the log-determinant of shape ``(B,)``."""
        self._check_input(x, cond)
        return self.chain.forward_and_logdet(x, *cond)

    def inverse(self, z: Tensor, *cond: Tensor) -> Tensor:
        """``x = g(z) = f^-1(z)``: latent to flow space (memory-efficient under autograd too)."""
        self._check_input(z, cond)
        return self.chain.inverse(z, *cond)

    def inverse_and_logdet(self, z: Tensor, *cond: Tensor) -> Tuple[Tensor, Tensor]:
        """``(g(z), log|det dg/dz|)``."""
        self._check_input(z, cond)
        return self.chain.inverse_and_logdet(z, *cond)

    def prox(self, z: Tensor, lam) -> Tensor:
        """Proximal step of ``lam * (-log p_Z)`` in latent space (``z / (1 + lam)`` for the Gaussian)."""
        return prior_prox(z, lam, self.prior)

    # -- densities -------------------------------------------------------------------------------------
    def log_prob(self, x: Tensor, *cond: Tensor) -> Tensor:
        """Continuous log-density of flow-space ``x`` (nats), shape ``(B,)`` (given ``cond``, for a
        conditional Glow)."""
        z, ld = self.forward_and_logdet(x, *cond)
        return prior_log_prob(z, self.prior) + ld

    def dequantize(
        self, x01: Tensor, dequantize: bool = True, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """Quantise ``x01`` to ``n_bits`` and dequantise into flow space.

        ``k = floor(round(255 * x01) / 2**(8 - n_bits))`` (Glow's reduction of 8-bit data), then
        ``x = (k + u) / 2**n_bits - 0.5`` with ``u ~ U[0, 1)`` (``u = 1/2``, the bin centre, when
        ``dequantize=False``); ``x`` lies in ``[-0.5, 0.5)``. ``generator`` may live on another device
        than ``x01`` (a CPU generator for reproducible noise on any device).
        """
        n_bins = 2**self.n_bits
        k = torch.floor(torch.round(x01.clamp(0.0, 1.0) * 255.0) / 2 ** (8 - self.n_bits))
        if dequantize:
            dev = generator.device if generator is not None else x01.device
            u = torch.rand(x01.shape, generator=generator, dtype=x01.dtype, device=dev).to(x01.device)
        else:
            u = torch.full_like(x01, 0.5)
        return (k + u) / n_bins - 0.5

    def nll_bpd(
        self, x01: Tensor, dequantize: bool = True, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """Negative log-likelihood in bits per dimension of ``n_bits`` data, shape ``(B,)``.

        With ``x = dequantize(x01)`` and ``D = C * H * W``:
        ``bpd = (-log p(x) + D * log(2**n_bits)) / (D * log 2)``. The ``D * n_bits`` bits term is the
        change of variables from ``[0, 2**n_bits)`` integers to the unit-width flow space; this is the
        convention of the Glow code (CIFAR-10 8-bit: 3.35 bits/dim in the paper). The mean over the batch
        is the maximum-likelihood loss; its expectation over ``u`` bounds the discrete NLL from above.
        """
        x = self.dequantize(x01, dequantize, generator)
        d = x[0].numel()
        return (-self.log_prob(x) + d * math.log(2**self.n_bits)) / (d * math.log(2.0))

    # -- sampling --------------------------------------------------------------------------------------
    def _latent_shape(self, n: int) -> Tuple[int, int, int, int]:
        return (n, self.in_channels, *self.image_size)

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None,
        cond: Optional[Tensor] = None,
    ) -> Tensor:
        """``n`` samples ``postprocess(g(T * z))``, ``z`` from the prior, in image space ``[0, 1]``.

        ``temperature`` T scales the latent's standard deviation (Glow shows T = 0.7); T = 0 gives
        :meth:`mode`. ``generator`` may be a CPU generator for a model on another device. ``cond``: the
        conditioning images of a conditional Glow, ``(n, cond_channels, H, W)``.
        """
        p = next(self.parameters())
        dev = generator.device if generator is not None else p.device
        z = prior_sample(self._latent_shape(n), self.prior, 1.0, generator, p.dtype, dev).to(p.device)
        return self.postprocess(self.inverse(z * temperature, *(() if cond is None else (cond,))))

    @torch.no_grad()
    def mode(self, n: int = 1, cond: Optional[Tensor] = None) -> Tensor:
        """The most likely latent mapped back, ``postprocess(g(0))``, shape ``(n, C, H, W)`` in ``[0, 1]``
        (``cond``: as for :meth:`sample`).

        (For the solver's start ``x_0 = g(0)`` in flow space, use ``glow.inverse(zeros)``.)
        """
        p = next(self.parameters())
        z = torch.zeros(self._latent_shape(n), dtype=p.dtype, device=p.device)
        return self.postprocess(self.inverse(z, *(() if cond is None else (cond,))))

    # -- save / load -----------------------------------------------------------------------------------
    def save(self, path: Union[str, os.PathLike], extra: Optional[Dict[str, Any]] = None) -> None:
        """Write config and state dict atomically (with a checksum) to ``path``.

        Args:
            path: the file.
            extra: plain values (metrics, data description) stored alongside under ``"extra"``.
        """
        from ..checkpoint import save_checkpoint

        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        save_checkpoint(
            path, {"format": _FORMAT, "config": dict(self.config), "state_dict": state,
                   "extra": dict(extra or {})},
            keep_previous=False,
        )

    @classmethod
    def load(
        cls, path: Union[str, os.PathLike], map_location: Any = "cpu", memory_efficient: bool = True
    ) -> Glow:
        """Rebuild a Glow written by :meth:`save` (no user code needed), in evaluation mode.

        ``memory_efficient`` is how the loaded flow runs under autograd (the engine by default), whatever
        the flow was trained with: a training choice is not a property of the model.

        Raises:
            FileNotFoundError: the file is missing.
            ValueError: the file is not a saved Glow.
        """
        from ..checkpoint import load_checkpoint

        state = load_checkpoint(path, map_location=map_location)
        if not isinstance(state, dict) or state.get("format") not in (_FORMAT, *_OLD_FORMATS):
            raise ValueError(f"{path} is not a Glow saved by Glow.save (format {_FORMAT!r} missing)")
        sd = state["state_dict"]
        dtype = next(v.dtype for v in sd.values() if v.is_floating_point())
        glow = cls.from_config({**state["config"], "memory_efficient": memory_efficient}).to(dtype=dtype)
        glow.load_state_dict(sd)
        return glow.eval()

    def extra_repr(self) -> str:
        c = self.config
        cond = f", cond_channels={self.cond_channels}" if self.cond_channels else ""
        return (
            f"in_channels={c['in_channels']}, image_size={tuple(c['image_size'])}, levels={c['levels']}, "
            f"steps={c['steps']}, hidden={c['hidden']}, coupling={c['coupling']!r}, "
            f"prior={c['prior']!r}, n_bits={c['n_bits']}{cond}"
        )
