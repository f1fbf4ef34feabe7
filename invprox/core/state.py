"""What the engine records of each block in the forward pass to recompute it exactly in the backward."""

from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import get_device_states, set_device_states

__all__ = ["BlockState"]

#: Devices whose autocast state is recorded and replayed, on or off, around every recompute.
_AUTOCAST_DEVICES = ("cpu", "cuda")


class BlockState:
    """Input shape, random state and autocast state of one block call.

    ``replay()`` re-enters the random and autocast state of the forward call, so a block with dropout
    draws the same mask in the recompute (as in ``torch.utils.checkpoint``); ``restore_buffers(block)``
    undoes buffer updates (running statistics, initialisation flags) that a recompute makes.
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
    def capture(cls, x: Tensor, cond: Sequence[Tensor], preserve_rng: bool) -> BlockState:
        cpu_rng, devices, device_rng = None, [], []
        if preserve_rng:
            cpu_rng = torch.get_rng_state()
            devices, device_rng = get_device_states(x, *cond)
        cache = torch.is_autocast_cache_enabled()
        autocast = [
            (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev), cache)
            for dev in _AUTOCAST_DEVICES
        ]
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

    @contextlib.contextmanager
    def replay(self):
        with contextlib.ExitStack() as stack:
            if self.cpu_rng is not None:
                stack.enter_context(torch.random.fork_rng(devices=self.devices))
                torch.set_rng_state(self.cpu_rng)
                if self.devices:
                    set_device_states(self.devices, self.device_rng)
            # off as well as on (as torch.utils.checkpoint does): a backward run inside an autocast
            # region must not recompute in low precision a block whose forward ran without autocast
            for dev, enabled, dtype, cache in self.autocast:
                stack.enter_context(torch.autocast(dev, dtype=dtype, enabled=enabled, cache_enabled=cache))
            yield

    @staticmethod
    @contextlib.contextmanager
    def restore_buffers(block: nn.Module):
        saved = [(b, b.detach().clone()) for b in block.buffers()]
        try:
            yield
        finally:
            with torch.no_grad():
                for b, v in saved:
                    if b.shape == v.shape:
                        b.copy_(v)
