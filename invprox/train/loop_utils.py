"""Small helpers shared by the training loops: devices, data in memory, schedules, Adam, image grids, JSON.

Nothing here imports tqdm or Pillow at module import time.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "resolve_device",
    "dataset_tensor",
    "epoch_order",
    "lr_factor",
    "SCHEDULES",
    "warmup_schedule",
    "adam",
    "save_image_grid",
    "write_json",
    "Progress",
    "NonFiniteSteps",
]

PathLike = Union[str, os.PathLike]


#: the learning-rate schedules (:func:`lr_factor`)
SCHEDULES = ("constant", "cosine")


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``.

    Raises:
        ValueError: a CUDA device is asked for and CUDA is not available.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available; use --device cpu")
    return dev


def dataset_tensor(dataset: Dataset, limit: Optional[int] = None) -> Tensor:
    """The first ``limit`` items (all when ``None``) of a data set of equal-shape tensors, stacked.

    Raises:
        ValueError: the data set is empty.
    """
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n < 1:
        raise ValueError(f"data set {dataset!r} is empty")
    return torch.stack([dataset[i] for i in range(n)])


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The permutation of ``range(n)`` used in ``epoch``: a pure function of ``(seed, epoch)``.

    Resuming in the middle of an epoch therefore needs only the epoch and the position in it.
    """
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


def lr_factor(kind: str, warmup: int, step: int, t: float) -> float:
    """The learning-rate multiplier of every schedule in the library, at 0-based ``step``.

    A linear warm-up from ``1 / warmup`` to 1 over the first ``warmup`` steps, times 1 (``"constant"``) or
    ``(1 + cos(pi t)) / 2`` (``"cosine"``), where ``t`` in [0, 1] is how far the run has got: the caller's
    measure (steps after the warm-up in pre-training, the budget used by a solver's training).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    f = (step + 1) / warmup if warmup and step < warmup else 1.0
    if kind == "cosine":
        f *= 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))
    return f


def warmup_schedule(warmup: int, total: Optional[int] = None, kind: str = "constant") -> Callable:
    """LR multiplier for :class:`torch.optim.lr_scheduler.LambdaLR`: :func:`lr_factor` by steps.

    Linear warm-up from ``1 / warmup`` to 1 over ``warmup`` steps, then constant (``"constant"``) or a
    cosine decay to 0 at step ``total`` (``"cosine"``).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    if kind == "cosine" and not total:
        raise ValueError("the cosine schedule needs the total number of steps")
    warmup = max(int(warmup), 0)

    def factor(step: int) -> float:
        return lr_factor(kind, warmup, step, max(step - warmup, 0) / max((total or 1) - warmup, 1))

    return factor


#: devices with a fused Adam kernel for floating-point parameters (torch >= 2.4)
_FUSED_ADAM_DEVICES = ("cpu", "cuda")


def adam(params: Any, **kw: Any) -> torch.optim.Adam:
    """``torch.optim.Adam(params, **kw)``, fused where every parameter is a floating-point tensor on a
    device that has the fused kernel (one kernel for all tensors instead of a Python loop over them).

    A flow prox holds hundreds of small tensors (a Glow's ActNorms, LU factors and coupling layers: 394 in
    Table 1's untied one-fold solver); on one CPU thread the loop over them took ~9 ms of its ~100 ms
    training step, the fused kernel under 3 ms. The update is Adam's either way.
    """
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(t.is_floating_point() and t.device.type in _FUSED_ADAM_DEVICES
                                  for t in tensors)
    return torch.optim.Adam(params, fused=fused or None, **kw)


def save_image_grid(
    images: Tensor, path: PathLike, nrow: int = 8, pad: int = 2, scale: int = 1
) -> Tuple[int, int]:
    """Write images ``(N, C, H, W)`` in ``[0, 1]`` (C = 1 or 3) as one PNG grid, ``nrow`` per row.

    Args:
        images: the images; values are clamped to ``[0, 1]``.
        path: the PNG file (its folder is created).
        nrow: images per row.
        pad: white pixels between images.
        scale: integer nearest-neighbour upscaling (small images are easier to see).

    Returns:
        The grid's (width, height) in pixels.
    """
    from PIL import Image

    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    x = images.detach().float().cpu().clamp(0, 1)
    if scale > 1:
        x = x.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    n, c, h, w = x.shape
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    grid = torch.ones(c, nrows * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    arr = (grid * 255).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if c == 1 else arr)  # "L" or "RGB"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return img.size


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: Union[str, torch.device] = "cpu") -> dict:
    """What a run ran on, for its metrics: CPU model, the vector instructions torch's CPU kernels use
    (``AVX2``, ``AVX512``...: two VMs that report the same model name can differ there, and a step's CPU
    time with them), cores, torch threads and version; the GPU's name for a CUDA device."""
    info = {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (temporary file, then :func:`os.replace`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


class Progress:
    """The training loops' progress bar: over steps, or over seconds for a run bounded by time.

    The bar is silent when the output is not a terminal (a log file gets no carriage returns) or when
    ``enabled`` is false. A time-bounded run shows its seconds used out of the budget, not a step count
    whose end it will never reach.

    Args:
        total: steps of the run. initial: steps already done (on resume).
        desc: the bar's label. enabled: show it at all.
        seconds: the run's time budget; the bar then counts ``used()`` seconds out of it.
        used: callable returning the seconds used so far (default: wall time since the bar started).
    """

    def __init__(self, total: int, initial: int, desc: str, enabled: bool = True,
                 seconds: Optional[float] = None, used: Optional[Callable[[], float]] = None):
        import time

        from tqdm.auto import tqdm

        t0 = time.time()
        self.seconds = seconds
        self.used = used or (lambda: time.time() - t0)
        disable = None if enabled else True  # None: tqdm turns itself off when not on a terminal
        if seconds is None:
            self.bar = tqdm(total=total, initial=min(initial, total), disable=disable, unit="step", desc=desc)
        else:
            fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s{postfix}"
            self.bar = tqdm(total=float(seconds), disable=disable, desc=desc, bar_format=fmt)
        self.step = initial

    def update(self, **postfix: Any) -> None:
        """One step done; ``postfix`` values are shown after the bar."""
        self.step += 1
        if self.seconds is None:
            self.bar.update(1)
        else:
            self.bar.n = min(float(self.used()), float(self.seconds))
            postfix = {"step": self.step, **postfix}
        self.bar.set_postfix(**postfix)

    def close(self) -> None:
        self.bar.close()


class NonFiniteSteps:
    """The one policy for training steps whose loss or gradient norm is not finite: skip the step (no
    update), up to ``limit`` in a row; the next one is an error.

    Every trainer uses it (``invprox train``'s ``--skip-nonfinite``, ``invprox pretrain``'s, the
    examples'). :meth:`check` says whether a step is good; :meth:`skip` records a bad one and says whether
    it may be skipped; :attr:`skipped` lists ``{"step", "why"}`` of every skipped step.

    Args:
        limit: how many non-finite steps in a row are skipped (0: none, the first stops the run).
    """

    def __init__(self, limit: int):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"the limit of skipped non-finite steps must be an int >= 0, got {limit!r}")
        self.limit = limit
        self.in_a_row = 0
        self.skipped: list = []

    @staticmethod
    def check(loss: float, grad_norm: Optional[float] = None) -> Optional[str]:
        """``None`` for a finite step, else what was not finite."""
        if not math.isfinite(loss):
            return f"training loss is {loss}"
        if grad_norm is not None and not math.isfinite(grad_norm):
            return f"gradient norm is {grad_norm}"
        return None

    def good(self) -> None:
        """A finite step: the count of non-finite steps in a row starts again."""
        self.in_a_row = 0

    def skip(self, step: int, why: str) -> bool:
        """Record non-finite step ``step``; ``True`` if it is skipped, ``False`` if the run must stop."""
        self.in_a_row += 1
        if self.in_a_row > self.limit:
            return False
        self.skipped.append({"step": step, "why": why})
        return True
