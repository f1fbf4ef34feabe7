"""Unrolled solvers: flow prox on the engine, and the baselines of the seed paper's Table 1."""

from .flow_prox import FlowProxSolver, LatentShrinkage, SoftThreshold

__all__ = ["FlowProxSolver", "LatentShrinkage", "SoftThreshold"]

from .baselines import ResNetProx, ResNetProxSolver, UNetProx, UNetProxSolver, UnrolledSolver
from .classical import bm3d_available, bm3d_denoise, classical_reference, noisy_input, tv_reconstruction
from .factory import SOLVER_KINDS, build_solver, count_parameters
from .latent_map import LatentMAP

__all__ += [
    "SOLVER_KINDS",
    "LatentMAP",
    "ResNetProx",
    "ResNetProxSolver",
    "UNetProx",
    "UNetProxSolver",
    "UnrolledSolver",
    "bm3d_available",
    "bm3d_denoise",
    "build_solver",
    "classical_reference",
    "count_parameters",
    "noisy_input",
    "tv_reconstruction",
]
