"""Memory, time and gradient error of ONE training step of the unrolled flow-prox solver as the number of
folds K grows, by training method; a paper-scale projection; and where invprox's time goes.

The model is :class:`invprox.solvers.FlowProxSolver` (untied folds: every fold has its own copy of the
Glow, so parameters and optimizer state grow linearly in K) on denoising (``A = I``). One training step is

    out = solver(y); loss = mse(out, x); loss.backward(); adam.step()

with the same weights (a deep copy of one solver), the same batch and the same Adam settings for every
method:

    standard          ``solver.memory_efficient = False`` (ordinary autograd through every block)
    checkpoint        the same blocks, each fold's block sequence run as one plain function under
                      ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``
    memcnn            ``memcnn.InvertibleModuleWrapper(block, keep_input=False)`` around every block of
                      ``solver.chain.blocks``. memcnn 1.5.2 accepts several inputs, but it (a) calls the
                      inverse with the outputs only (a block ``(x, y) -> x'`` cannot be inverted without
                      ``y``) and (b) frees the storage of *every* input when ``keep_input=False``, which would
                      destroy the measurement shared by all folds. So blocks that take the measurement (the
                      DC steps, and the couplings, which accept and ignore it) are wrapped in a closure
                      module holding ``y`` (:class:`BindCond`); memcnn sees one-input blocks.
    invprox           ``solver.chain`` (the engine), pure inversion (``keep_every=None``)
    invprox_keepfold  the engine keeping each fold's input (``keep_every = solver.fold_blocks()``)
    invprox_norng     (optional) pure inversion with ``chain.preserve_rng_state = False``; since commit
                      64c0e21 the engine drops the random state of blocks that drew no random numbers, so
                      this differs from ``invprox`` only by the per-block capture-and-compare in the forward

Reported per method and K:

* ``saved``: bytes saved for backward by the forward and the loss (saved-tensor hooks,
  :func:`invprox.core.memory.saved_tensor_bytes`; parameters excluded, each storage once).
* ``held``: bytes kept alive outside saved-tensor hooks: attributes of custom autograd Functions' contexts
  (invprox: RNG states of blocks that drew random numbers, none here; memcnn: its inputs/outputs) and, for
  checkpoint, the inputs and CPU RNG state that each non-reentrant checkpoint's closure keeps (counted by
  the benchmark).
  ``act = saved + held`` is the activation memory of the step.
* ``params``, ``grads``, ``adam``: bytes of parameters, their gradients and Adam's state (apart from
  activations; all linear in K for untied folds).
* ``peak``: on CPU the peak RSS of a FRESH child process (this script with ``--child``) during one
  training step minus its RSS just before it, after building the solver and running one warm-up step on a
  batch of 1 (so ``.grad`` and Adam's state already exist and are not in ``peak``); see
  ``benchmarks/_common.py`` (``VmHWM`` reset, fixed glibc mmap threshold). On CUDA: the peak allocated
  during the step (``torch.cuda.max_memory_allocated``, in-process), above what was allocated before it.
* ``time``: per training step, median over repeats (methods interleaved in a rotating order). On CPU the
  primary number is the process CPU time (``time.process_time``, robust to other processes sharing the
  cores); wall time is reported too. Ratios are to ``standard`` in the same run.
* ``grad_err``: ``||g - g_standard|| / ||g_standard||`` over all parameter gradients of the first step.
  A step whose gradient is not finite skips the Adam update (as AMP's GradScaler does) and is marked.
* out of memory (``RuntimeError`` / ``MemoryError``) or above ``--budget`` is recorded, not raised; a
  method whose linear fit over the K already measured predicts more than the budget is skipped and marked.

``--budget`` also gives, per method, the largest K that fits: a LINEAR FIT in K of
``params + grads + adam + act`` (and of ``params + grads + adam + peak``) over the measured K,
extrapolated. On CUDA ``peak`` is the real allocator peak.

``--parts projection``: the paper-scale solver's memory on an 80 GB GPU, PROJECTED from CPU measurements
(``solver_k_projection.py``). ``--parts profile``: where an engine step's time goes, from the engine's own
``torch.profiler`` spans (``solver_runner.profile``).

Usage::

    python benchmarks/solver_k.py                                  # CPU, K = 1 2 4 8 16 32 64, all parts
    python benchmarks/solver_k.py --ks 1 2 4 --repeats 3 --parts sweep --no-peak     # quick look
    python benchmarks/solver_k.py --device cuda --batch 16 --size 64 --levels 3 --steps 32 --hidden 512 \\
        --budget 80GB --ks 1 2 4 8 16
    python benchmarks/solver_k.py --parts projection profile     # merged into the existing results
    python benchmarks/solver_k.py --parts peaks                  # re-run only the peak-memory children
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from functools import partial
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import invprox  # noqa: E402

from _common import (  # noqa: E402
    command_line,
    fmt_bytes,
    machine_info,
    median,
    run_child,
    write_results,
)
from _harness import (  # noqa: E402
    check_device,
    failure_status,
    fmt_budget,
    git_commit,
    interleaved_times,
    largest_k,
    linear_fit,
    parse_bytes,
    rel_err,
    start,
)
from methods import import_memcnn  # noqa: E402
from solver_k_projection import projection  # noqa: E402
from solver_k_report import render  # noqa: E402
from solver_runner import (  # noqa: E402
    Runner,
    build_flow,
    build_solver,
    child_main,
    cuda_peak,
    first_step,
    make_batch,
    profile,
)

METHODS = ("standard", "checkpoint", "memcnn", "invprox", "invprox_keepfold", "invprox_norng")
DEFAULT_METHODS = METHODS[:5]
#: configuration keys that define a sweep (results of other parts are merged only when these agree)
SWEEP_KEYS = ("batch", "channels", "size", "levels", "steps", "hidden", "seed", "init_scale", "sigma", "lr",
              "flow", "device")
ENGINE_METHODS = ("standard", "invprox", "invprox_keepfold", "invprox_norng")
HERE = os.path.dirname(os.path.abspath(__file__))


# -- child (peak RSS of one step in a fresh process) ----------------------------------------------------
def child_args(args, method: str, K: int) -> List[str]:
    a = ["--child", method, "--ks", str(K), "--batch", str(args.batch), "--channels", str(args.channels),
         "--size", str(args.size), "--levels", str(args.levels), "--steps", str(args.steps),
         "--hidden", str(args.hidden), "--seed", str(args.seed), "--init-scale", str(args.init_scale),
         "--sigma", str(args.sigma), "--lr", str(args.lr), "--device", "cpu",
         "--threads", str(torch.get_num_threads())]
    if args.flow:
        a += ["--flow", args.flow]
    return a


# -- sweep ----------------------------------------------------------------------------------------------


def record_failure(res: Dict[str, Dict[str, Any]], method: str, e: BaseException) -> None:
    res[method]["status"] = failure_status(e)


def predicted_total(rows: List[Dict[str, Any]], K: int) -> Optional[float]:
    pts = [(r["K"], r["state"] + r["act"]) for r in rows if r.get("status") == "ok"]
    if not pts:
        return None
    if len(pts) == 1:
        k0, v0 = pts[0]
        return v0 * K / k0
    f = linear_fit([p[0] for p in pts], [p[1] for p in pts])
    return f["a"] + f["b"] * K


def sweep(args) -> Dict[str, Any]:
    methods = list(args.methods)
    if "memcnn" in methods and import_memcnn() is None:
        print("memcnn is not installed: skipping it", file=sys.stderr)
        methods.remove("memcnn")
    flow = build_flow(args)
    x, y = make_batch(args, args.batch)
    rows: List[Dict[str, Any]] = []
    by_method: Dict[str, List[Dict[str, Any]]] = {m: [] for m in methods}
    for K in args.ks:
        t_k = time.perf_counter()
        base = build_solver(flow, K, args.device)
        runners: Dict[str, Runner] = {}
        res: Dict[str, Dict[str, Any]] = {}
        grads: Dict[str, Tensor] = {}
        for m in methods:
            r0 = {"method": m, "K": K, "status": "ok"}
            pred = predicted_total(by_method[m], K)
            if pred is not None and pred > args.budget:
                r0.update(status="over budget (predicted by a linear fit)", predicted=pred)
                res[m] = r0
                continue
            try:
                runner = Runner(m, base, args.lr)
                out, g = first_step(runner, x, y)
                r0.update(out)
                if r0["state"] + r0["act"] > args.budget:
                    r0["status"] = "over budget"
                runners[m], grads[m] = runner, g
            except Exception as e:  # noqa: BLE001 - recorded, not raised
                r0["status"] = failure_status(e)
                runners.pop(m, None)
                gc.collect()
            res[m] = r0
        g_std = grads.get("standard")
        for m, g in grads.items():
            res[m]["grad_err"] = rel_err(g, g_std) if g_std is not None else None
        del grads
        # timing: rotating order, median; the primary clock is the CPU time on the CPU, wall time on CUDA
        times = interleaved_times({m: partial(r.step, x, y) for m, r in runners.items()}, args.repeats,
                                  args.device, args.time_budget, on_error=partial(record_failure, res))
        primary = "cpu" if args.device == "cpu" else "wall"
        for m, t in times.items():
            if t[primary]:
                res[m].update(time=median(t[primary]), wall=median(t["wall"]), times=t[primary],
                              walls=t["wall"], repeats=len(t[primary]))
        if args.device.startswith("cuda") and not args.no_peak:
            for m in list(runners):
                try:
                    p = cuda_peak(runners[m], x, y)
                    res[m].update(peak=p["delta"], peak_absolute=p["absolute"])
                    if p["absolute"] > args.budget:
                        res[m]["status"] = "over budget"
                except Exception as e:  # noqa: BLE001
                    record_failure(res, m, e)
        del runners, base
        gc.collect()
        if args.device == "cpu" and not args.no_peak:
            for m in methods:
                if res[m]["status"] == "ok":
                    cpu_peaks(args, res[m])
        t_std = res.get("standard", {}).get("time")
        w_std = res.get("standard", {}).get("wall")
        for m in methods:
            r = res[m]
            r["time_ratio"] = r["time"] / t_std if t_std and r.get("time") else None
            r["wall_ratio"] = r["wall"] / w_std if w_std and r.get("wall") else None
            rows.append(r)
            by_method[m].append(r)
        print(f"K={K}: " + ", ".join(
            f"{m} {res[m]['time'] * 1e3:.0f}ms" if res[m].get("time") else f"{m} {res[m]['status']}"
            for m in methods) + f" ({time.perf_counter() - t_k:.0f} s)", file=sys.stderr, flush=True)
    return {"rows": rows, "methods": methods, "fits": make_fits(args, rows, methods),
            "flow_params": sum(p.numel() for p in flow.parameters())}


def cpu_peaks(args, row: Dict[str, Any]) -> None:
    """Run the peak child for ``row`` (method, K) and store ``peak`` (RSS) and ``peak_tensor`` in it."""
    try:
        c = run_child(os.path.abspath(__file__), child_args(args, row["method"], row["K"]),
                      timeout=args.child_timeout)
        row["peak"] = c["delta"]
        row["peak_tensor"] = c["tensor_peak"]
        row["rss"] = {k: c[k] for k in ("base_rss", "base_peak", "peak", "peak_reset", "tensor_net",
                                        "tensor_events")}
        row.pop("peak_error", None)
    except Exception as e:  # noqa: BLE001 - a killed child is recorded
        row["peak_error"] = str(e)[-300:]


def make_fits(args, rows: List[Dict[str, Any]], methods: Sequence[str]) -> Dict[str, Any]:
    """Per method: linear fits in K of memory totals, and the largest K within ``args.budget``."""
    fits = {}
    for m in methods:
        ok = [r for r in rows if r["method"] == m and r["status"] in ("ok", "over budget") and "act" in r]
        ks = [r["K"] for r in ok]
        out: Dict[str, Any] = {"ks": ks, "state_fit": linear_fit(ks, [r["state"] for r in ok]),
                               "act_fit": linear_fit(ks, [r["act"] for r in ok])}
        for name, key in (("act", "act"), ("peak", "peak"), ("tensor", "peak_tensor")):
            pts = [r for r in ok if r.get(key) is not None]
            f = linear_fit([r["K"] for r in pts], [r["state"] + r[key] for r in pts])
            out[f"total_{name}_fit"] = f
            out[f"largest_k_{name}"] = largest_k(f, args.budget)
        fits[m] = out
    return fits


def refresh_peaks(args, payload: Dict[str, Any]) -> None:
    """``--parts peaks``: re-run the peak children of an existing sweep (same configuration) in place."""
    sw = payload["sweep"]
    for r in sw["rows"]:
        if r["status"] == "ok":
            t = time.perf_counter()
            cpu_peaks(args, r)
            print(f"peaks K={r['K']} {r['method']}: RSS {fmt_bytes(r.get('peak'))} MiB, tensors "
                  f"{fmt_bytes(r.get('peak_tensor'))} MiB ({time.perf_counter() - t:.0f} s)",
                  file=sys.stderr, flush=True)
    sw["fits"] = make_fits(args, sw["rows"], sw["methods"])


# -- main -----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="One training step of the unrolled flow-prox solver vs the number of folds K: memory, "
        "time, gradient error of standard autograd, checkpoint per fold, memcnn and the invprox engine; a "
        "paper-scale projection; a time profile of the engine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64], help="numbers of folds K")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS,
                   help="training methods (see the module docstring; invprox_norng is optional)")
    p.add_argument("--batch", type=int, default=4, help="batch size")
    p.add_argument("--channels", type=int, default=3, help="image channels")
    p.add_argument("--size", type=int, default=32, help="image height and width")
    p.add_argument("--levels", type=int, default=2, help="Glow levels")
    p.add_argument("--steps", type=int, default=4, help="Glow steps per level")
    p.add_argument("--hidden", type=int, default=32, help="hidden channels of the coupling networks")
    p.add_argument("--flow", default=None, help="load this saved Glow (Glow.save) instead of a random one")
    p.add_argument("--init-scale", type=float, default=1.0,
                   help="scale of the (PyTorch default) init given to the zero-initialised last layers; "
                   "0 keeps Glow's zeros")
    p.add_argument("--sigma", type=float, default=0.2, help="noise std of the synthetic measurement")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per method and K (median)")
    p.add_argument("--time-budget", type=float, default=240.0,
                   help="stop repeating at a K after this many seconds (at least 3 repeats)")
    p.add_argument("--budget", type=parse_bytes, default=parse_bytes("8GiB"),
                   help="memory budget: over it is recorded as such; the largest K that fits is fitted")
    p.add_argument("--no-peak", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--child-timeout", type=float, default=1800.0, help="seconds per peak-RSS child")
    p.add_argument("--parts", nargs="+", default=["sweep", "projection", "profile"],
                   choices=["sweep", "projection", "profile", "peaks"],
                   help="what to run. Without 'sweep', the results are merged into the existing "
                   "<out>/<stem>.json when its sweep has the same configuration; 'peaks' re-runs only the "
                   "peak-memory children of that sweep")
    p.add_argument("--profile-k", type=int, default=4, help="K of the time profile")
    p.add_argument("--profile-repeats", type=int, default=7, help="repeats of the time profile")
    p.add_argument("--proj-levels", type=int, default=3, help="paper-scale Glow levels")
    p.add_argument("--proj-steps", type=int, default=32, help="paper-scale Glow steps per level")
    p.add_argument("--proj-hidden", type=int, default=512, help="paper-scale hidden channels")
    p.add_argument("--proj-target-batch", type=int, default=16, help="paper-scale batch")
    p.add_argument("--proj-sizes", type=int, nargs="+", default=[8, 16, 32],
                   help="reduced image sizes measured for the projection (divisible by 2**levels)")
    p.add_argument("--proj-batch", type=int, default=1, help="batch of the reduced-size measurements")
    p.add_argument("--proj-budget", type=parse_bytes, default=parse_bytes("76GiB"),
                   help="usable memory of the projected GPU (H100 80 GB: 79.2 GiB, minus context, cuDNN "
                   "workspace and fragmentation)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="output folder")
    p.add_argument("--stem", default=None, help="output file stem (default solver_k_<device>)")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    p.add_argument("--fresh", action="store_true",
                   help="without 'sweep' in --parts, do not merge into the existing <out>/<stem>.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    check_device(p, args.device)
    args.budget_str = fmt_budget(args.budget)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    start(args.threads, quiet=(FutureWarning, UserWarning))
    if args.child:
        child_main(args)
        return
    t0 = time.perf_counter()
    payload: Dict[str, Any] = {
        "benchmark": "solver_k",
        "command": command_line(__file__, argv),
        "machine": machine_info(args.device, memcnn=getattr(import_memcnn(), "__version__", None),
                                invprox=invprox.__version__),
        "config": {k: v for k, v in vars(args).items() if k not in ("child",)},
        "git_commit": git_commit(),
        "workaround": "ChannelRange.uses_cond set from the wrapped block (see the module docstring)",
    }
    stem = args.stem or f"solver_k_{args.device.split(':')[0]}"
    path = os.path.join(args.out, stem + ".json")
    if "sweep" not in args.parts and not args.fresh and os.path.exists(path):
        # keep the parts of the existing results that are not re-run (same sweep configuration only)
        import json

        with open(path) as f:
            old = json.load(f)
        if all(old.get("config", {}).get(k) == getattr(args, k) for k in SWEEP_KEYS):
            old.setdefault("history", []).append({"parts": list(args.parts), "command": payload["command"]})
            payload = dict(old, machine=payload["machine"])
        elif "peaks" in args.parts:
            raise SystemExit(f"--parts peaks: {path} has another sweep configuration")
    if "peaks" in args.parts:
        if "sweep" not in payload:
            raise SystemExit(f"--parts peaks needs an existing sweep in {path}")
        refresh_peaks(args, payload)
    payload["flow_params"] = sum(p.numel() for p in build_flow(args, init_batch=0).parameters())
    if "sweep" in args.parts:
        payload["sweep"] = sweep(args)
        payload["sweep"].pop("flow_params")
    if "profile" in args.parts:
        payload["profile"] = profile(args, args.profile_k)
        print("profile done", file=sys.stderr, flush=True)
    if "projection" in args.parts:
        payload["projection"] = projection(args)
    payload["total_seconds"] = payload.get("total_seconds", 0) + time.perf_counter() - t0
    md = render(args, payload)
    paths = write_results(args.out, stem, payload, md)
    if not args.no_plots and "sweep" in payload:
        from plots import plot_solver_k

        paths += plot_solver_k(payload, os.path.join(args.out, stem))
    print(md)
    print("wrote " + ", ".join(paths), file=sys.stderr)


if __name__ == "__main__":
    main()
