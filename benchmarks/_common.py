"""Shared helpers of the benchmarks: machine description, child-process peak RSS, profiler spans, results.

* :func:`machine_info`: CPU model, cores, torch version, device name, for the JSON of every benchmark.
* :func:`run_children`: several child processes at a time.
* :func:`run_child` / :func:`child_report` / :func:`rss_now_bytes` / :func:`peak_rss_bytes`: peak-memory
  measurement on CPU. A benchmark re-launches itself (``sys.executable`` running the same script in a
  ``--child`` mode) so that every measurement starts from a fresh process; the child records its peak RSS
  after building the model and again after the step, and prints the numbers as one tagged JSON line that
  :func:`run_child` parses. On Linux the peak is the process's ``VmHWM``, reset to the current RSS just
  before the step (:func:`reset_peak_rss`): ``resource.getrusage(...).ru_maxrss`` is also recorded, but in
  a child it starts at the parent's peak (see :func:`ru_maxrss_bytes`), which hides the child's own peak
  whenever the parent is the larger. The child runs with
  ``MALLOC_MMAP_THRESHOLD_`` fixed (glibc): every allocation of 64 KiB or more is then its own ``mmap`` and
  goes back to the OS when freed, so the peak RSS follows the peak of live tensors instead of glibc's heap
  reuse (the dynamic mmap threshold otherwise keeps freed multi-MiB blocks in the heap).
* :func:`markdown_table`, :func:`write_results`: a markdown table and the ``<stem>.json`` / ``<stem>.md``
  pair under ``benchmarks/results``.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from invprox.core.memory import peak_rss_bytes, reset_peak_rss, rss_now_bytes, ru_maxrss_bytes
from invprox.train.loop_utils import cpu_model, machine

__all__ = [
    "CHILD_TAG",
    "command_line",
    "ctx_held",
    "storage_key",
    "child_report",
    "load_trained_solver",
    "missing_solvers",
    "trained_task",
    "fmt_bytes",
    "machine_info",
    "markdown_table",
    "median",
    "peak_rss_bytes",
    "reset_peak_rss",
    "rss_now_bytes",
    "ru_maxrss_bytes",
    "run_child",
    "run_children",
    "step_peak_rss",
    "sync",
    "write_results",
]

#: Prefix of the one line of JSON a child process prints for its parent.
CHILD_TAG = "@@BENCH_CHILD@@"

#: glibc settings for children measuring peak RSS (see the module docstring).
CHILD_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}


# -- machine --------------------------------------------------------------------------------------------
def machine_info(device: str = "cpu", **extra: Any) -> Dict[str, Any]:
    """What ran the benchmark: CPU model and cores, OS, Python, torch (threads, CUDA device), extras."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        usable = os.cpu_count()
    # what a training run records (CPU model and vector instructions, cores, threads, Python, torch), and more
    info: Dict[str, Any] = dict(machine(device), cpu_usable=usable, platform=platform.platform(),
                                device=device, device_name=cpu_model())
    if str(device).startswith("cuda") and torch.cuda.is_available():
        dev = torch.device(device)
        props = torch.cuda.get_device_properties(dev)
        info["device_name"] = props.name
        info["device_memory_bytes"] = int(props.total_memory)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    info.update(extra)
    return info


def describe_machine(info: Dict[str, Any]) -> str:
    """One line for a table caption: ``device_name (CPU: ..., n cores), torch x.y``."""
    s = f"{info['device_name']}"
    if info.get("device", "cpu") != "cpu":
        s += f" (host CPU: {info['cpu']})"
    s += f", {info['cpu_usable']} usable cores ({info['torch_threads']} torch threads), torch {info['torch']}"
    return s


# -- timing ---------------------------------------------------------------------------------------------
def sync(device: Any) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return float(statistics.median(xs)) if xs else float("nan")


# -- memory: peak_rss_bytes, reset_peak_rss, rss_now_bytes, ru_maxrss_bytes live in invprox.core.memory --
def step_peak_rss(step: Callable[[], Any]) -> Dict[str, Any]:
    """Run ``step()`` and measure the peak RSS it adds above the process's state just before it.

    Call in a fresh child process after building the model (and after any warm-up). Collects garbage,
    resets the peak (:func:`reset_peak_rss`), runs ``step`` once and returns ``delta`` (peak after minus
    peak before, bytes) with the raw numbers, ``ru_maxrss`` before and after included.
    """
    gc.collect()
    ru_before = ru_maxrss_bytes()
    reset = reset_peak_rss()
    base_rss = rss_now_bytes()
    base_peak = peak_rss_bytes()
    step()
    peak = peak_rss_bytes()
    return {
        "delta": peak - base_peak,
        "base_rss": base_rss,
        "base_peak": base_peak,
        "peak": peak,
        "peak_reset": reset,
        "ru_maxrss_before": ru_before,
        "ru_maxrss_after": ru_maxrss_bytes(),
    }


def child_report(result: Dict[str, Any]) -> None:
    """Print ``result`` as the tagged JSON line :func:`run_child` looks for (call once, in the child)."""
    sys.stdout.write(CHILD_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_child(
    script: str,
    args: Sequence[str],
    timeout: Optional[float] = None,
    env: Optional[Dict[str, str]] = None,
) -> Dict[str, Any]:
    """Run ``python script *args`` in a fresh process; returns the dict it printed with :func:`child_report`.

    The child inherits this environment plus :data:`CHILD_MALLOC_ENV` and ``env``.

    Raises:
        RuntimeError: when the child fails or prints no tagged line (its stderr is in the message).
    """
    full_env = dict(os.environ)
    full_env.update(CHILD_MALLOC_ENV)
    full_env.setdefault("PYTHONWARNINGS", "ignore")
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, timeout=timeout, env=full_env
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_TAG):
            return json.loads(line[len(CHILD_TAG):])
    raise RuntimeError(
        f"child {script} {' '.join(args)} exited with {proc.returncode} and no result:\n"
        f"{proc.stderr[-4000:]}"
    )


def run_children(
    script: str, arg_lists: Sequence[Sequence[str]], jobs: int = 1, timeout: Optional[float] = None
) -> List[Dict[str, Any]]:
    """:func:`run_child` for each argument list, ``jobs`` at a time; results in the order given.

    Each child's peak RSS is its own, so running several at once changes no memory number; it only
    shortens the wall time (each child spends seconds importing torch). Do not time anything meanwhile.
    """
    if jobs <= 1:
        return [run_child(script, a, timeout) for a in arg_lists]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda a: run_child(script, a, timeout), arg_lists))


def fmt_bytes(n: Optional[float], unit: str = "MiB", digits: int = 2) -> str:
    """``n`` bytes in ``unit`` (``KiB``, ``MiB``, ``GiB``); ``-`` for ``None``."""
    if n is None:
        return "-"
    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]
    return f"{n / scale:.{digits}f}"


# -- output ---------------------------------------------------------------------------------------------
def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], align: Optional[str] = None
) -> str:
    """A GitHub markdown table. ``align``: one character per column, ``l``, ``r`` or ``c`` (default: the
    first column left, the others right)."""
    headers = [str(h) for h in headers]
    align = align or ("l" + "r" * (len(headers) - 1))
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(marks[a] for a in align) + " |",
    ]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: str, stem: str, payload: Dict[str, Any], markdown: str) -> List[str]:
    """Write ``<out_dir>/<stem>.json`` and ``<out_dir>/<stem>.md``; returns the two paths."""
    os.makedirs(out_dir, exist_ok=True)
    jpath = os.path.join(out_dir, stem + ".json")
    mpath = os.path.join(out_dir, stem + ".md")
    with open(jpath, "w") as f:
        json.dump(payload, f, indent=2, default=_json_default)
        f.write("\n")
    with open(mpath, "w") as f:
        f.write(markdown)
    return [jpath, mpath]


def _json_default(o: Any) -> Any:
    if isinstance(o, (torch.dtype, torch.device)):
        return str(o)
    if isinstance(o, float) and o != o:
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# -- autograd-context accounting (tensors kept outside the saved-tensor hooks) --------------------------
def storage_key(t: Tensor):
    return (str(t.device), t.untyped_storage().data_ptr())


def ctx_held(root: Tensor, skip: set) -> Dict[Any, int]:
    """Storages of tensors held as attributes of custom-Function contexts in ``root``'s graph.

    Searches lists, tuples, dicts and plain objects (``__dict__`` / ``__slots__``) a few levels deep; skips
    modules, callables and storages whose key is in ``skip`` (parameters, what the hooks already saw).
    """
    found: Dict[Any, int] = {}
    seen = set()

    def visit(obj, level):
        if level > 4 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Tensor):
            k = storage_key(obj)
            n = obj.untyped_storage().nbytes()
            if n and k not in skip:
                found[k] = n
            return
        atoms = (nn.Module, str, bytes, int, float, bool, type(None), torch.Size)
        if isinstance(obj, atoms) or callable(obj):
            return
        if isinstance(obj, dict):
            for v in obj.values():
                visit(v, level + 1)
            return
        if isinstance(obj, (list, tuple, set)):
            for v in obj:
                visit(v, level + 1)
            return
        for name in getattr(type(obj), "__slots__", ()):
            visit(getattr(obj, name, None), level + 1)
        for v in getattr(obj, "__dict__", {}).values():
            visit(v, level + 1)

    stack, nodes = [root.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in nodes:
            continue
        nodes.add(fn)
        if isinstance(fn, torch.autograd.function.BackwardCFunction):
            for v in fn.__dict__.values():
                visit(v, 0)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return found


#: the engine's torch.profiler spans (invprox.core.errors.span), in the order of the reports
SPANS = ("invprox.forward", "invprox.state_capture", "invprox.backward", "invprox.rebuild", "invprox.vjp",
         "invprox.graph_leaves")


def profiled_spans(step: Callable[[], Any]) -> Tuple[Dict[str, float], Any]:
    """Run ``step`` under ``torch.profiler``; seconds inside each engine span (children included), and the
    profiler (for its operator table). No monkeypatching: the spans are the engine's own."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    out = {k: 0.0 for k in SPANS}
    for e in prof.key_averages():
        if e.key in out:
            out[e.key] = e.cpu_time_total / 1e6
    return out, prof


def span_parts(sp: Dict[str, float]) -> Tuple[List[Tuple[str, float]], float]:
    """The split of a profiled engine step from :func:`profiled_spans`' seconds: ``([(part, seconds)], the
    profiled step's seconds)``, in the order every report prints it."""
    inner = sp["invprox.rebuild"] + sp["invprox.vjp"] + sp["invprox.graph_leaves"]
    parts = [
        ("forward (no graph)", sp["invprox.forward"]),
        ("  of which state capture (RNG, autocast, buffers)", sp["invprox.state_capture"]),
        ("backward", sp["invprox.backward"]),
        ("  rebuilds (inverse and recompute with graph; fused: one network pass)", sp["invprox.rebuild"]),
        ("  vector-Jacobian products (torch.autograd.grad)", sp["invprox.vjp"]),
        ("  graph-leaf walks (blocks that declare nothing)", sp["invprox.graph_leaves"]),
        ("  other (engine loop, replay of kept blocks, buffers, small ops)",
         max(0.0, sp["invprox.backward"] - inner)),
    ]
    return parts, sp["invprox.forward"] + sp["invprox.backward"]


def load_trained_solver(run: str, last: bool = False) -> Tuple[nn.Module, Dict[str, Any]]:
    """A run of ``invprox train``: its ``solver.pt`` (the best state) and config; with ``last``, the
    weights of its ``checkpoint.pt`` (the last state, e.g. of a run stopped by a non-finite loss)."""
    from invprox.checkpoint import load_checkpoint
    from invprox.train.solver_setup import load_solver

    solver, cfg = load_solver(os.path.join(run, "solver.pt"))
    if last:
        solver.load_state_dict(load_checkpoint(os.path.join(run, "checkpoint.pt"))["model"])
    return solver, cfg


def run_record(runs_dir: Any, name: str, kind: str, results_dir: Any = None) -> Path:
    """A run of ``benchmarks/table1.sh``: its training metrics (``kind="metrics"``) or its test results
    (``kind="results"``). The file in ``runs_dir`` (``NAME/metrics.json``, ``eval_NAME/results.json``) where
    the run is still there, else the copy the script's ``eval_test`` keeps in ``results_dir`` (default
    ``benchmarks/results``: ``table1_train_NAME.json``, ``table1_NAME_results.json``), since ``runs/`` is
    git-ignored and does not outlive a machine. FileNotFoundError naming both places when neither holds it."""
    if kind not in ("metrics", "results"):
        raise ValueError(f"kind must be 'metrics' or 'results', got {kind!r}")
    runs_dir = Path(runs_dir)
    if results_dir is None:
        results_dir = Path(__file__).resolve().parent / "results"
    results_dir = Path(results_dir)
    if kind == "metrics":
        places = [runs_dir / name / "metrics.json", results_dir / f"table1_train_{name}.json"]
    else:
        places = [runs_dir / f"eval_{name}" / "results.json", results_dir / f"table1_{name}_results.json"]
    for f in places:
        if f.is_file():
            return f
    raise FileNotFoundError(f"{places[0]} is missing and has no copy {places[1]}: train and test run {name} "
                            "first (benchmarks/table1.sh)")


def missing_solvers(runs: Iterable[str]) -> List[str]:
    """The run folders among ``runs`` that hold no ``solver.pt`` (for a parser error naming them)."""
    return [r for r in runs if not os.path.isfile(os.path.join(r, "solver.pt"))]


def trained_task(run: str, seed: int = 0) -> Tuple[nn.Module, Dict[str, Any], Any]:
    """A trained solver of ``invprox train`` in training mode, its config, and the operator of the task it
    was trained for (``task_physics`` of its config; random parts, e.g. an inpainting mask, drawn with
    ``seed``). The caller chooses the images and draws the measurements (``op.measure``)."""
    from invprox.train.solver_setup import task_physics

    solver, cfg = load_trained_solver(run)
    shape = (cfg["channels"], cfg["size"], cfg["size"])
    op = task_physics(cfg["task"], shape, cfg["physics_options"], torch.Generator().manual_seed(seed))
    return solver.train(), cfg, op


def command_line(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command that ran the benchmark ``script`` (its ``__file__``) with ``argv`` (default: this
    process's arguments), from the repository root and shell-quoted, so that it can be pasted back as is."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", os.path.relpath(os.path.abspath(script), root), *args])
