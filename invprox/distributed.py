"""Data-parallel training through the engine: process groups, sharded loading, rank-0 output.

:class:`torch.nn.parallel.DistributedDataParallel` (DDP) works with :class:`invprox.InvertibleChain` and
everything built on it (Glow, :class:`invprox.solvers.FlowProxSolver`) unchanged: the chain's parameters
are inputs of its ``autograd.Function``, so their gradients reach the ``AccumulateGrad`` nodes on which
DDP's reducer hooks sit, exactly as under standard autograd. What was checked (``tests/test_distributed.py``,
``docs/reliability.md``):

* ``find_unused_parameters`` is not needed: every parameter of the chain that takes part in the forward
  gets a gradient (a parameter that takes no part would need the flag under standard autograd too).
* DDP's broadcast of buffers at every forward (``broadcast_buffers=True``) is harmless: the engine records
  no buffer in its forward and restores the buffers each block had after recomputing it in the backward.
* Two processes on halves of a global batch end with the parameters of one process on the whole batch,
  to 1e-10 in float64, with SGD and Adam.

Two things DDP does not do for you (helpers below):

* **Data-dependent initialisation** (Glow's :class:`~invprox.flows.ActNorm`) that runs in the first DDP
  forward runs on each rank's own batch, and the ranks' parameters silently diverge (DDP synchronises
  gradients, not parameters). Initialise before wrapping (DDP broadcasts rank 0's parameters when it is
  built), or call :func:`broadcast_module` after the initialisation. :func:`wrap_ddp` warns about
  modules still waiting for their initialisation.
* The engine's backward hands all parameter gradients of a chain to autograd at the end of that chain's
  backward, so DDP's all-reduce cannot overlap with the backward of the chain (a FlowProxSolver is one
  chain: its all-reduce runs after its backward). Under standard autograd the buckets of the last layers
  are reduced while earlier layers still compute. Not measured on GPUs here (no multi-GPU machine).

Launch with ``torchrun --nproc_per_node=2 script.py`` (see ``examples/ddp_train.py``). Every helper also
works in a single process without ``torchrun``: :func:`init_distributed` is then a no-op and
:func:`make_loader` shards over one replica, so a script runs unchanged either way.
"""

from __future__ import annotations

import builtins
import datetime
import gc
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = [
    "DistInfo",
    "barrier",
    "broadcast_module",
    "cleanup",
    "default_backend",
    "dist_info",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "make_loader",
    "max_parameter_difference",
    "print0",
    "save_on_main",
    "set_epoch",
    "wrap_ddp",
]

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def default_backend() -> str:
    """``"nccl"`` where CUDA (and NCCL) is available, else ``"gloo"`` (CPU)."""
    if torch.cuda.is_available() and dist.is_available() and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def _device_for(backend: Optional[str], local_rank: int) -> torch.device:
    if backend == "nccl":
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def dist_info() -> DistInfo:
    """Rank, world size, local rank, backend and device of this process (defaults when not distributed)."""
    if not is_distributed():
        return DistInfo()
    backend = str(dist.get_backend())
    local = _env_int("LOCAL_RANK", dist.get_rank())
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, backend, _device_for(backend, local))


def init_distributed(
    backend: Optional[str] = None,
    init_method: Optional[str] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    timeout_s: float = 300.0,
) -> DistInfo:
    """Initialise the default process group from ``torchrun``'s environment (or explicit arguments).

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT`` through the
    ``env://`` init method) as set by ``torchrun``. Without them (``WORLD_SIZE`` unset or 1, no
    ``init_method``) it initialises nothing and returns the single-process :class:`DistInfo`, so the
    same script runs with and without ``torchrun``. Calling it again returns the current state.

    Args:
        backend: ``"gloo"`` (CPU), ``"nccl"`` (CUDA); default :func:`default_backend`.
        init_method: e.g. ``"tcp://127.0.0.1:29500"`` or ``"file:///tmp/initfile"``; default ``env://``.
        rank: this process's rank (default ``$RANK``).
        world_size: number of processes (default ``$WORLD_SIZE``).
        timeout_s: timeout of collective operations.

    Returns:
        The :class:`DistInfo` of this process. With NCCL, the current CUDA device is set to
        ``cuda:LOCAL_RANK``.

    Raises:
        RuntimeError: ``torch.distributed`` is not available in this build.
        ValueError: inconsistent rank / world size, or an unknown backend.
    """
    if is_distributed():
        return dist_info()
    world = _env_int("WORLD_SIZE", 1) if world_size is None else world_size
    if world == 1 and init_method is None:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of PyTorch")
    rank = _env_int("RANK", 0) if rank is None else rank
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world_size must be a positive int, got {world!r}")
    if not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank must be an int in [0, {world}), got {rank!r}")
    backend = backend or default_backend()
    if backend not in ("gloo", "nccl", "mpi", "ucc"):
        raise ValueError(f"unknown backend {backend!r}; use 'gloo' (CPU) or 'nccl' (CUDA)")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend 'nccl' needs CUDA; use 'gloo' on CPU")
    local = _env_int("LOCAL_RANK", rank)
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(
        backend, init_method=init_method or "env://", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return dist_info()


def cleanup() -> None:
    """Destroy the default process group, if any (call at the end of a distributed script, on every rank:
    it begins with a barrier).

    Drop your references to the ``DistributedDataParallel`` wrappers first (``del model``): the process
    group's last reference must go with :func:`torch.distributed.destroy_process_group`, whose destructor
    releases the GIL, not with a DDP reducer, whose destructor holds it while it waits for gloo's worker
    threads, one of which may be waiting for the GIL to free a tensor: the process then hangs at exit
    (seen here in about one ``torchrun`` run in seven; pytorch/pytorch#56297). A barrier first lets every
    rank's last collectives finish, and a garbage collection frees the wrappers' reference cycles.
    """
    if is_distributed():
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True on rank 0, and in a single process."""
    return not is_distributed() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for all ranks (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def print0(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only (flushed, so lines from ``torchrun`` children appear in order)."""
    if is_main_process():
        kwargs.setdefault("flush", True)
        builtins.print(*args, **kwargs)


def save_on_main(path: PathLike, state: Dict[str, Any], keep_previous: bool = True) -> Optional[Path]:
    """Write a checkpoint from rank 0 only (atomically, with a checksum), then wait for all ranks.

    Uses :func:`invprox.checkpoint.save_checkpoint`. Every rank must call it (it ends with a barrier, so that
    no rank reads the file before it is complete). Unwrap DDP first: save ``ddp.module.state_dict()``.

    Returns:
        The path on rank 0, ``None`` on the other ranks.
    """
    from .checkpoint import save_checkpoint

    out = save_checkpoint(path, state, keep_previous=keep_previous) if is_main_process() else None
    barrier()
    return out


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    **loader_kwargs: Any,
) -> DataLoader:
    """A :class:`~torch.utils.data.DataLoader` over this rank's shard of ``dataset``.

    Always uses a :class:`~torch.utils.data.DistributedSampler` (over one replica in a single process),
    so that one process with ``batch_size * world_size`` sees, step by step, the union of the batches the
    ranks see: the distributed run and its single-process reference train on the same global batches.
    Call :func:`set_epoch` at the start of every epoch (else every epoch repeats the first order).

    Args:
        dataset: a map-style data set.
        batch_size: samples per step **per process** (the global batch is ``batch_size * world_size``).
        shuffle: shuffle with ``seed + epoch``, identically on every rank.
        seed: the shuffling seed.
        drop_last: drop the tail that does not fill a global batch (keeps every step's global batch
            full and the ranks in step; ``False`` pads by repeating samples, as DistributedSampler does).
        **loader_kwargs: passed to :class:`~torch.utils.data.DataLoader` (``num_workers``, ...).

    Raises:
        ValueError: ``batch_size`` is not a positive int, or the data set is smaller than one global batch
            with ``drop_last``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if "sampler" in loader_kwargs or "shuffle" in loader_kwargs:
        raise TypeError("make_loader sets the sampler itself; pass shuffle= and seed= instead")
    info = dist_info()
    n = len(dataset)  # type: ignore[arg-type]
    if drop_last and n < batch_size * info.world_size:
        raise ValueError(
            f"the data set has {n} samples, fewer than one global batch of {batch_size} x "
            f"{info.world_size} processes; lower batch_size or pass drop_last=False"
        )
    sampler = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed,
        drop_last=drop_last,
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **loader_kwargs)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the loader's :class:`~torch.utils.data.DistributedSampler` the epoch (new shuffle order)."""
    fn = getattr(loader.sampler, "set_epoch", None)
    if fn is not None:
        fn(epoch)


def _pending_data_init(module: nn.Module):
    for name, m in module.named_modules():
        flag = getattr(m, "initialized", None)
        if isinstance(flag, torch.Tensor) and flag.numel() == 1 and callable(getattr(m, "initialize", None)):
            if not bool(flag):
                yield name or type(m).__name__


def wrap_ddp(model: nn.Module, device: Optional[torch.device] = None, **ddp_kwargs: Any) -> nn.Module:
    """``DistributedDataParallel(model)`` with the settings the engine needs (none special).

    Moves ``model`` to ``device`` (default: this rank's device) and wraps it; in a single process it
    returns ``model`` itself. ``find_unused_parameters`` stays ``False`` and ``broadcast_buffers``
    ``True`` (DDP's defaults) unless given. Warns when a module still has a pending data-dependent
    initialisation (an ``initialized`` flag that is false), which would run per rank in the first
    forward and make the ranks' parameters differ (see the module docstring).
    """
    info = dist_info()
    device = device or info.device
    model = model.to(device)
    pending = list(_pending_data_init(model))
    if pending and info.world_size > 1 and model.training:
        warnings.warn(
            f"{len(pending)} module(s) ({', '.join(pending[:3])}{', ...' if len(pending) > 3 else ''}) "
            "will initialise from data in their first training forward, separately on each rank, so "
            "the ranks' parameters would differ. Run one forward before wrap_ddp (then DDP broadcasts "
            "rank 0's values), or call invprox.distributed.broadcast_module after it.",
            RuntimeWarning,
            stacklevel=2,
        )
    if not is_distributed():
        return model
    if device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [device.index])
        ddp_kwargs.setdefault("output_device", device.index)
    return nn.parallel.DistributedDataParallel(model, **ddp_kwargs)


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers into every rank's ``module`` (no-op in a single process)."""
    if not is_distributed():
        return
    module = getattr(module, "module", module)  # DDP-wrapped or not
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


def _reduce(value: float, op) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=dist_info().device)  # NCCL reduces CUDA tensors
    dist.all_reduce(t, op=op)
    return float(t.item())


def max_over_ranks(value: float) -> float:
    """The largest ``value`` over the ranks, the same on every rank; ``value`` itself in one process."""
    return _reduce(value, dist.ReduceOp.MAX) if is_distributed() else value


def mean_over_ranks(value: float) -> float:
    """The mean of ``value`` over the ranks, the same on every rank; ``value`` itself in one process."""
    return _reduce(value, dist.ReduceOp.SUM) / dist.get_world_size() if is_distributed() else value


def any_rank(flag: bool) -> bool:
    """``flag`` on any rank (every rank then takes the same decision); ``flag`` itself in one process."""
    return max_over_ranks(float(flag)) > 0


def max_parameter_difference(module: nn.Module) -> float:
    """Largest absolute difference between this rank's parameters and buffers and rank 0's.

    Every rank must call it; all get the same answer (0.0 in a single process). For tests and for
    checking, after a few steps, that the ranks have not drifted apart.
    """
    if not is_distributed():
        return 0.0
    module = getattr(module, "module", module)
    worst = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            ref = t.detach().clone()
            dist.broadcast(ref, 0)
            if t.is_floating_point():
                diff = (t.detach() - ref).abs().max().double().cpu()
            else:
                diff = (t.detach() != ref).any().double().cpu()
            worst = torch.maximum(worst, diff)
    worst = worst.to(dist_info().device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)
