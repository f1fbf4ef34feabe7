"""Normalizing flows built from engine blocks: Glow and its layers.

Every layer is an invertible block of :mod:`invprox.core`, so a flow (or a solver made of flows) trains
with activation memory one block deep. See :mod:`invprox.flows.glow` for the image / flow / latent spaces.
"""

from .coupling import AdditiveCoupling, AffineCoupling, CouplingNet
from .glow import Glow, build_glow_blocks
from .layers import (
    ActNorm,
    ChannelRange,
    InvConv1x1,
    SplitPrior,
    Squeeze,
    Unsqueeze,
    random_rotation,
    squeeze2d,
    unsqueeze2d,
)
from .prior import PRIORS, prior_log_prob, prior_prox, prior_sample
from .step import GlowStep

__all__ = [
    "PRIORS",
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "ChannelRange",
    "CouplingNet",
    "Glow",
    "GlowStep",
    "InvConv1x1",
    "SplitPrior",
    "Squeeze",
    "Unsqueeze",
    "build_glow_blocks",
    "prior_log_prob",
    "prior_prox",
    "prior_sample",
    "random_rotation",
    "squeeze2d",
    "unsqueeze2d",
]
