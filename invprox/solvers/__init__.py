"""Unrolled solvers: flow prox on the engine, and the baselines of the seed paper's Table 1."""

from .flow_prox import FlowProxSolver, LatentShrinkage, SoftThreshold

__all__ = ["FlowProxSolver", "LatentShrinkage", "SoftThreshold"]
