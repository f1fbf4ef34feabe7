"""The benchmarks' experiment harness: interleaved timing, gradient comparison, memory-budget fits, sizes.

Every experiment script (``engine_depth.py``, ``solver_k.py``, ...) builds its models with the method
adapters of ``methods.py`` and measures them with these helpers, so that two scripts never time, compare
or fit in two ways.

* :func:`interleaved_times`: time several training steps against each other, in a rotating order (so that
  a slow phase of a shared machine hits every method alike), per call the process CPU time and the wall
  time, CUDA synchronised around each call. The CPU time is the primary number on the CPU: on a machine
  shared with other jobs it is the compute time itself (with one torch thread), where the wall time also
  counts the waits. ``torch.utils.benchmark.Timer`` measures wall time only and repeats one statement at a
  time, which is why the benchmarks interleave with their own loop.
* :func:`phase_times`: the same rotation for steps split into phases (forward, backward, optimizer), each
  phase's median.
* :func:`rel_err`: ``||g - ref|| / ||ref||``, the gradient error every table reports.
* :func:`linear_fit`, :func:`largest_k`: least-squares fits of memory in K and the largest K within a
  budget (a fit, never a measurement: the tables say so).
* :func:`parse_bytes`, :func:`fmt_budget`, :func:`is_oom`, :func:`git_commit`, and the table formatters
  :func:`fmt_err`, :func:`fmt_ratio`, :func:`fmt_k`.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import time
import warnings
from collections import defaultdict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from _common import median, sync

__all__ = ["interleaved_times", "phase_times", "cpu_clock", "start", "check_device", "rel_err", "linear_fit",
           "largest_k", "parse_bytes", "fmt_budget", "is_oom", "failure_status", "git_commit", "fmt_err",
           "fmt_ratio", "fmt_k"]


def interleaved_times(
    steps: Mapping[str, Callable[[], Any]],
    repeats: int,
    device: Any = "cpu",
    time_budget: Optional[float] = None,
    min_repeats: int = 3,
    on_error: Optional[Callable[[str, BaseException], None]] = None,
    warmup: int = 0,
) -> Dict[str, Dict[str, List[float]]]:
    """Time every step ``repeats`` times, the methods in a rotating order; ``{name: {"cpu": [...], "wall":
    [...]}}`` in seconds.

    ``warmup`` rounds run first and are not recorded. After ``min_repeats`` rounds, no new round starts
    once ``time_budget`` seconds have passed. A step that raises is passed to ``on_error(name, exception)``
    and not timed again (without ``on_error`` the exception propagates).
    """
    alive = list(steps)
    out: Dict[str, Dict[str, List[float]]] = {m: {"cpu": [], "wall": []} for m in steps}
    t_start = time.perf_counter()
    for rep in range(-warmup, repeats):
        if time_budget is not None and rep >= min_repeats and time.perf_counter() - t_start > time_budget:
            break
        k = rep % len(alive) if alive else 0
        for m in alive[k:] + alive[:k]:
            try:
                sync(device)
                c0, w0 = time.process_time(), time.perf_counter()
                steps[m]()
                sync(device)
                if rep >= 0:
                    out[m]["cpu"].append(time.process_time() - c0)
                    out[m]["wall"].append(time.perf_counter() - w0)
            except Exception as e:  # noqa: BLE001 - handed to the caller
                if on_error is None:
                    raise
                on_error(m, e)
                alive.remove(m)
    return out


def phase_times(
    steps: Mapping[str, Callable[[Callable[[str], None]], Any]], repeats: int, device: Any = "cpu"
) -> Dict[str, Dict[str, float]]:
    """Median seconds of each phase of several methods' steps: ``{name: {phase: s, ..., "step": s}}``.

    ``steps[name](mark)`` runs one step and calls ``mark(phase)`` as each phase ends (the time since the
    previous mark, or the step's start, is that phase's); ``"step"`` is the sum of a step's phases. One
    warm-up round, then ``repeats`` rounds in a rotating order; the clock of :func:`cpu_clock`, CUDA
    synchronised at every mark.
    """
    clock = cpu_clock(device)
    names = list(steps)
    runs: Dict[str, Dict[str, List[float]]] = {m: defaultdict(list) for m in names}
    for rep in range(-1, repeats):
        k = rep % len(names)
        for m in names[k:] + names[:k]:
            parts: Dict[str, float] = {}
            sync(device)
            steps[m](_marker(parts, clock, device))
            if rep >= 0:
                for phase, v in parts.items():
                    runs[m][phase].append(v)
                runs[m]["step"].append(sum(parts.values()))
    return {m: {phase: median(v) for phase, v in ph.items()} for m, ph in runs.items()}


def _marker(parts: Dict[str, float], clock: Callable[[], float], device: Any) -> Callable[[str], None]:
    """``mark(phase)``: add the time since the previous mark (or now) to ``parts[phase]``."""
    last = [clock()]

    def mark(phase: str) -> None:
        sync(device)
        now = clock()
        parts[phase] = parts.get(phase, 0.0) + now - last[0]
        last[0] = now

    return mark


def cpu_clock(device: Any) -> Callable[[], float]:
    """The primary clock: the process's CPU time on the CPU (robust to other processes), wall time on CUDA."""
    return time.process_time if str(device) == "cpu" else time.perf_counter


def check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """A parser error for ``--device cuda`` on a machine without CUDA."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")


def start(threads: int, quiet: Sequence[type] = (FutureWarning,)) -> None:
    """A benchmark process's set-up: ``threads`` torch threads (0: torch's default), the warning categories
    ``quiet`` silenced (memcnn's deprecation warnings on every call)."""
    if threads:
        torch.set_num_threads(threads)
    for category in quiet:
        warnings.filterwarnings("ignore", category=category)


def rel_err(g: Tensor, ref: Tensor) -> float:
    """``||g - ref|| / ||ref||`` (the reference's norm bounded below by 1e-300)."""
    return float((g - ref).norm() / ref.norm().clamp_min(1e-300))


def linear_fit(ks: Sequence[float], ys: Sequence[float]) -> Optional[Dict[str, float]]:
    """Least-squares ``y = a + b K`` (``None`` for fewer than 2 points)."""
    if len(ks) < 2:
        return None
    n = len(ks)
    mk, my = sum(ks) / n, sum(ys) / n
    sxx = sum((k - mk) ** 2 for k in ks)
    b = sum((k - mk) * (v - my) for k, v in zip(ks, ys)) / sxx
    a = my - b * mk
    ss_tot = sum((v - my) ** 2 for v in ys)
    ss_res = sum((v - a - b * k) ** 2 for k, v in zip(ks, ys))
    return {"a": a, "b": b, "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def largest_k(fit: Optional[Dict[str, float]], budget: float) -> Optional[float]:
    """The largest K with ``a + b K <= budget`` (``inf`` for a slope <= 0, ``None`` without a fit)."""
    if fit is None:
        return None
    if fit["a"] > budget:
        return 0
    if fit["b"] <= 0:
        return math.inf
    return math.floor((budget - fit["a"]) / fit["b"])


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(s: str) -> int:
    """``"8GiB"``, ``"80GB"``, ``"512MiB"``, ``"1e9"`` -> bytes (an argparse type)."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", str(s))
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {s!r} (e.g. 8GiB, 80GB, 512MiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def fmt_budget(n: int) -> str:
    for unit, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= unit:
            return f"{n / unit:.4g} {name}"
    return f"{n} B"


def is_oom(e: BaseException) -> bool:
    """Whether ``e`` is an out-of-memory error (CPU or CUDA)."""
    if isinstance(e, MemoryError):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate" in msg
                                            or "cannot allocate" in msg)


def failure_status(e: BaseException) -> str:
    """How a table records a measurement that raised: ``out of memory`` or the error, shortened."""
    return "out of memory" if is_oom(e) else f"error: {type(e).__name__}: {e}"[:300]


def git_commit() -> Optional[str]:
    """The checked-out commit (``git rev-parse --short HEAD``), ``None`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=os.path.dirname(__file__),
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def fmt_err(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1e}"


def fmt_ratio(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}"


def fmt_k(v: Any) -> str:
    if v is None:
        return "-"
    if v == math.inf:
        return "unbounded (slope <= 0)"
    return f"{int(v):,}"
