"""Normalizing flows built from engine blocks."""

from .coupling import AdditiveCoupling, AffineCoupling, CouplingNet

__all__ = ["AdditiveCoupling", "AffineCoupling", "CouplingNet"]
