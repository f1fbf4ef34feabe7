"""What the engine records of each block in the forward pass to recompute it exactly in the backward."""

from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import get_device_states, set_device_states

__all__ = ["BlockState", "autocast_state"]

#: Devices whose autocast state is recorded and replayed, on or off, around every recompute.
_AUTOCAST_DEVICES = ("cpu", "cuda")


class BlockState:
    """Input shape, random state and autocast state of one block call.

    ``replay()`` re-enters the random and autocast state of the forward call, so a block with dropout
    draws the same mask in the recompute (as in ``torch.utils.checkpoint``). The autocast state is the
    chain call's (one list shared by all its blocks, see :func:`autocast_state`); the random state is
    recorded only around blocks that may draw random numbers (the chain's plan).
    """

    __slots__ = ("shape", "cpu_rng", "devices", "device_rng", "autocast")

    def __init__(self, shape, cpu_rng, devices, device_rng, autocast):
        self.shape = shape
        self.cpu_rng: Optional[Tensor] = cpu_rng
        self.devices: List[int] = devices
        self.device_rng: List[Tensor] = device_rng
        #: ``(device, enabled, dtype, cache_enabled)`` for each device of :data:`_AUTOCAST_DEVICES`
        self.autocast: List[Tuple[str, bool, torch.dtype, bool]] = autocast

    @classmethod
    def capture(cls, x: Tensor, cond: Sequence[Tensor], preserve_rng: bool,
                autocast: Optional[List[Tuple[str, bool, torch.dtype, bool]]] = None) -> BlockState:
        cpu_rng, devices, device_rng = None, [], []
        if preserve_rng:
            cpu_rng = torch.get_rng_state()
            devices, device_rng = get_device_states(x, *cond)
        autocast = autocast if autocast is not None else autocast_state()
        return cls(x.shape, cpu_rng, devices, device_rng, autocast)

    def settle(self, after: BlockState) -> None:
        """Forget the random state if the block drew no random numbers (the state ``after`` it is the same).

        Deterministic blocks then need no replay in the backward, and the chain keeps random states only
        for blocks with dropout or other randomness.
        """
        if self.cpu_rng is None:
            return
        same = torch.equal(self.cpu_rng, after.cpu_rng) and len(self.device_rng) == len(after.device_rng)
        same = same and all(torch.equal(a, b) for a, b in zip(self.device_rng, after.device_rng))
        if same:
            self.cpu_rng, self.devices, self.device_rng = None, [], []

    def needs_replay(self, autocast: bool = True) -> bool:
        """Whether :meth:`replay` has anything to do (a random state, or autocast to re-enter)."""
        return self.cpu_rng is not None or autocast

    @contextlib.contextmanager
    def replay(self, autocast: bool = True):
        """Re-enter the forward call's random state and (unless ``autocast`` is false: the caller knows the
        current autocast state equals the recorded one) its autocast state."""
        with contextlib.ExitStack() as stack:
            if self.cpu_rng is not None:
                stack.enter_context(torch.random.fork_rng(devices=self.devices))
                torch.set_rng_state(self.cpu_rng)
                if self.devices:
                    set_device_states(self.devices, self.device_rng)
            # off as well as on (as torch.utils.checkpoint does): a backward run inside an autocast
            # region must not recompute in low precision a block whose forward ran without autocast
            if autocast:
                for dev, enabled, dtype, cache in self.autocast:
                    stack.enter_context(
                        torch.autocast(dev, dtype=dtype, enabled=enabled, cache_enabled=cache))
            yield

    @staticmethod
    @contextlib.contextmanager
    def restore_buffers(block: nn.Module, buffers: Optional[Sequence[Tensor]] = None):
        """Undo changes a recompute makes to ``buffers`` (default: all of ``block``'s buffers)."""
        bufs = list(block.buffers()) if buffers is None else buffers
        saved = [(b, b.detach().clone()) for b in bufs]
        try:
            yield
        finally:
            with torch.no_grad():
                for b, v in saved:
                    if b.shape == v.shape:
                        b.copy_(v)


def autocast_state() -> List[Tuple[str, bool, torch.dtype, bool]]:
    """``(device, enabled, dtype, cache_enabled)`` of autocast now, for each of :data:`_AUTOCAST_DEVICES`."""
    cache = torch.is_autocast_cache_enabled()
    return [(dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev), cache)
            for dev in _AUTOCAST_DEVICES]
