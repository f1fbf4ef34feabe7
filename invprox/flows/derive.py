"""Copies of a trained Glow: two that compute exactly its flow until they are trained, and a cheaper one.

* :func:`condition_glow` (``Glow.with_condition``): every step's coupling network also reads a
  conditioning image, through a zero-initialised 1x1 convolution into its first hidden layer.
* :func:`widen_glow` (``Glow.widened``): wider coupling networks.
* :func:`truncate_glow` (``Glow.with_steps``): the first flow steps of each level only. This one is another
  flow: a level whose steps are all dropped hands on its input (squeezed, and normalised by its split prior
  where it has one) as its latents. An unrolled solver whose shrinkage leaves a level's latents almost
  alone (the coarsest, in the trained flow prox of ``benchmarks/TABLE1.md``) spends a third of its flow
  steps there, where ``f`` and ``g = f^-1`` cancel; dropping them makes its step that much cheaper.

:func:`widen_glow` gives a copy of a Glow whose coupling networks have ``hidden`` channels instead of the
trained ones (Net2Net-style): the trained units keep their weights, every new unit gets the fresh weights of
a Glow built with the wider config, and every weight *from* a new unit *into* a trained unit or into the
network's output is set to zero. So the copy computes exactly the trained ``f`` and ``g`` (and the same
log-determinant) until it is trained, and the new units take part from the first gradient step on: the
output layer's weights from them get gradients at once (their activations are not zero), and the rest
follows. A solver fine-tuned end to end can so have more capacity than its prior was trained with, without
a new pre-training.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["condition_glow", "truncate_glow", "widen_glow"]


def condition_glow(glow: Any, cond_channels: int) -> Any:
    """A conditional copy of ``glow`` (see :meth:`invprox.flows.Glow.with_condition`); a Glow already
    conditional on ``cond_channels`` channels is copied as it is.

    Raises:
        ValueError: ``cond_channels`` is not positive, or the Glow is conditional on another number of
            channels.
    """
    if not isinstance(cond_channels, int) or cond_channels < 1:
        raise ValueError(f"cond_channels must be a positive int, got {cond_channels!r}")
    if glow.cond_channels and glow.cond_channels != cond_channels:
        raise ValueError(f"this Glow is conditional on {glow.cond_channels} channels, not {cond_channels}")
    p = next(glow.parameters())
    out = type(glow).from_config({**glow.config, "cond_channels": cond_channels}).to(p.device, p.dtype)
    missing, unexpected = out.load_state_dict(glow.state_dict(), strict=False)
    if unexpected or any(not k.endswith("coupling.inject.weight") for k in missing):
        raise RuntimeError(f"with_condition: state does not map (missing {missing}, unexpected "
                           f"{unexpected})")  # pragma: no cover - the layouts are ours
    return out.train(glow.training)


def _embed(old: Tensor, new: Tensor) -> Tensor:
    """``new`` with ``old`` in its leading slice; for a weight whose input dimension grew, the weights from
    the new inputs into the old outputs are zero (old units must not read new ones)."""
    out = new.clone()
    out[tuple(slice(0, s) for s in old.shape)] = old
    if old.dim() >= 2 and new.shape[1] > old.shape[1]:
        out[: old.shape[0], old.shape[1]:] = 0
    return out


def widen_glow(glow: Any, hidden: int) -> Any:
    """A copy of ``glow`` whose coupling networks have ``hidden`` hidden channels (see the module).

    Args:
        glow: a :class:`~invprox.flows.Glow` (conditional or not).
        hidden: hidden channels of the copy's coupling networks, at least the Glow's.

    Raises:
        ValueError: ``hidden`` is not an int, or fewer channels than the Glow has.
    """
    have = int(glow.config["hidden"])
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < have:
        raise ValueError(f"hidden must be an int >= the Glow's {have} hidden channels, got {hidden!r}")
    p = next(glow.parameters())
    out = type(glow).from_config({**glow.config, "hidden": hidden}).to(p.device, p.dtype)
    new_state = out.state_dict()
    state = {}
    for key, value in glow.state_dict().items():
        if key not in new_state:  # pragma: no cover - the layouts are ours
            raise RuntimeError(f"widen_glow: {key} has no place in the wider Glow")
        target = new_state[key]
        if target.shape == value.shape:
            state[key] = value.clone()
        elif target.dim() != value.dim() or any(n < o for n, o in zip(target.shape, value.shape)):
            shapes = f"{tuple(value.shape)} -> {tuple(target.shape)}"  # pragma: no cover
            raise RuntimeError(f"widen_glow: {key} {shapes}")  # pragma: no cover
        else:
            state[key] = _embed(value, target)
    with torch.no_grad():
        out.load_state_dict(state)
    return out.train(glow.training)


def truncate_glow(glow: Any, steps: Sequence[int]) -> Any:
    """A copy of ``glow`` with the first ``steps[l]`` flow steps of each level ``l`` and every other block
    (squeezes, split priors), their weights and buffers copied (see the module).

    Args:
        glow: a :class:`~invprox.flows.Glow` (conditional or not).
        steps: one count per level, each at most the level's steps (0: none of them).

    Raises:
        ValueError: not one count per level, a count above the level's steps, or no step in all.
    """
    from .layers import Squeeze
    from .step import GlowStep, level_step_counts

    levels = int(glow.config["levels"])
    have = level_step_counts(glow.config["steps"], levels)
    want = level_step_counts(steps, levels)
    if any(w > h for w, h in zip(want, have)):
        raise ValueError(f"steps {list(want)} asks for more flow steps than the Glow has ({have} per level)")
    kept, level, taken = [], -1, 0
    for block in glow.chain.blocks:
        if isinstance(block, Squeeze):
            level, taken = level + 1, 0
        if isinstance(block, GlowStep):
            taken += 1
            if taken > want[level]:
                continue
        kept.append(block)
    p = next(glow.parameters())
    out = type(glow).from_config({**glow.config, "steps": want}).to(p.device, p.dtype)
    if len(out.chain.blocks) != len(kept):  # pragma: no cover - the layouts are ours
        raise RuntimeError("truncate_glow: the blocks do not map")
    with torch.no_grad():
        for new, old in zip(out.chain.blocks, kept):
            new.load_state_dict(old.state_dict())
    return out.train(glow.training)
