"""Shared by the unrolled solvers: the default forward operator, kept out of ``state_dict``."""

from __future__ import annotations

from typing import Any, Dict, List

from torch import nn

__all__ = ["SwappablePhysics"]


class SwappablePhysics(nn.Module):
    """A solver whose default ``physics`` is not a submodule: not in ``state_dict``, not moved by ``.to()``.

    A call passes its own operator, ``solver(y, op)``, for that call only. Setting the default,
    ``solver.physics = op``, points every data-consistency block in ``solver.dc`` at ``op``
    (``nn.Module.__setattr__`` would otherwise register an operator module under that name, bypassing any
    property, and leave the DC blocks on the old operator).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "physics":
            for dc in self.dc:
                dc.physics = value
            self.__dict__["_physics"] = value
        else:
            super().__setattr__(name, value)

    def param_groups(self, lr_net: float = 1e-5, lr_step: float = 1e-2) -> List[Dict[str, Any]]:
        """Optimizer groups: the networks (prox networks, flows) at ``lr_net``, the learned steps and
        shrinkages of ``step_parameters()`` at ``lr_step`` (the seed paper's 1e-5 and 1e-2)."""
        step = self.step_parameters()
        step_ids = {id(p) for p in step}
        net = [p for p in self.parameters() if id(p) not in step_ids]
        return [{"params": net, "lr": lr_net}, {"params": step, "lr": lr_step}]

    @property
    def physics(self) -> Any:
        """The current forward operator (settable: the DC blocks follow)."""
        return self.__dict__["_physics"]
