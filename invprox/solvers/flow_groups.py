"""Which parameters of the flow prox (:class:`~invprox.solvers.FlowProxSolver`) train at which rate: its
learned steps and shrinkages, the flows' coupling layers (and the conditioning network that only they
read), the split priors, whole multi-scale levels; and the optimizer groups built from them."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from torch import nn

__all__ = ["FlowParameterGroups"]


class FlowParameterGroups:
    """The parameter groups of :class:`~invprox.solvers.FlowProxSolver` (a mixin: it reads the solver's
    ``dc``, ``shrink``, ``flows``, ``inverse_flows`` and ``cond_net``, and extends the ``param_groups`` of
    :class:`~invprox.solvers._physics.SwappablePhysics`)."""

    def all_flows(self) -> List[nn.Module]:
        """Every flow of the solver: the folds' ``f_k``, and with ``untie_inverse`` the flows whose inverses
        are their ``g_k``."""
        return [*self.flows, *(self.inverse_flows or ())]

    def step_parameters(self) -> List[nn.Parameter]:
        """The learned step sizes ``mu_k`` and shrinkages ``lambda_k`` (own learning rate in the paper)."""
        return [p for m in (*self.dc, *self.shrink) for n, p in m.named_parameters() if "lam_net" not in n]

    def split_prior_parameters(self) -> List[nn.Parameter]:
        """The parameters of the flows' learned split priors (:class:`~invprox.flows.layers.SplitPrior`):
        the conditional mean and scale by which each factored-out latent is normalised."""
        from ..flows.step import parameters_by_kind

        return parameters_by_kind(self)["split"]

    def coupling_parameters(self) -> List[nn.Parameter]:
        """The parameters of the flows' coupling layers (their networks, and the injection of ``A^T y``
        with ``cond_y``): everything of the flows but ActNorm, the 1x1 convolutions and the split priors;
        and those of ``cond_net``, whose features only the couplings read."""
        from ..flows.step import parameters_by_kind

        own = [] if self.cond_net is None else list(self.cond_net.parameters())
        return parameters_by_kind(self)["coupling"] + own

    def level_parameters(self, levels: Sequence[int]) -> List[nn.Parameter]:
        """The parameters of the given multi-scale levels of every fold's flow (0: the finest; each level's
        flow steps and the split prior of its latents; :func:`~invprox.flows.step.parameters_by_level`).

        Raises:
            ValueError: a level the flows do not have.
        """
        from ..flows.step import parameters_by_level

        out: List[nn.Parameter] = []
        for flow in self.all_flows():
            by_level = parameters_by_level(flow.flow_blocks())
            for lv in levels:
                if isinstance(lv, bool) or not isinstance(lv, int) or not 0 <= lv < len(by_level):
                    raise ValueError(f"level {lv!r} is not one of the flows' levels 0 ... "
                                     f"{len(by_level) - 1} (0: the finest)")
                out += by_level[lv]
        return out

    def param_groups(self, lr_net: float = 1e-5, lr_step: float = 1e-2, lr_split: Optional[float] = None,
                     lr_coupling: Optional[float] = None,
                     freeze_levels: Optional[Sequence[int]] = None) -> List[Dict[str, Any]]:
        """Optimizer groups as for every solver (networks at ``lr_net``, ``mu_k`` and ``lambda_k`` at
        ``lr_step``); with ``lr_coupling``, the coupling layers' parameters (:meth:`coupling_parameters`)
        form a group at that rate, and with ``lr_split`` the split priors' (0: kept as pre-trained), so
        that ``lr_net`` is left to ActNorm, the 1x1 convolutions and any ``lam_y`` network. With
        ``freeze_levels``, those levels' parameters (:meth:`level_parameters`) leave every other group for
        one at rate 0 (kept as pre-trained).

        Raises:
            ValueError: a negative rate.
        """
        groups = super().param_groups(lr_net, lr_step)
        for name, lr, params in (("lr_coupling", lr_coupling, self.coupling_parameters),
                                 ("lr_split", lr_split, self.split_prior_parameters)):
            if lr is None:
                continue
            if not lr >= 0:
                raise ValueError(f"{name} must be a non-negative learning rate, got {lr!r}")
            own = params()
            ids = {id(p) for p in own}
            groups[0]["params"] = [p for p in groups[0]["params"] if id(p) not in ids]
            groups.append({"params": own, "lr": lr})
        if freeze_levels:
            own = list({id(p): p for p in self.level_parameters(freeze_levels)}.values())
            ids = {id(p) for p in own}
            for g in groups:
                g["params"] = [p for p in g["params"] if id(p) not in ids]
            groups.append({"params": own, "lr": 0.0})
        return groups
