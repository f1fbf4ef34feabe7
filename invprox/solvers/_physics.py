"""Shared by the unrolled solvers: the forward operator as swappable state."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["SwappablePhysics"]


class SwappablePhysics(nn.Module):
    """A solver whose ``physics`` is state, not a submodule: not in ``state_dict``, swappable per call.

    Setting ``solver.physics = op`` points every data-consistency block in ``solver.dc`` at ``op``
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

    @property
    def physics(self) -> Any:
        """The current forward operator (settable: the DC blocks follow)."""
        return self.__dict__["_physics"]
