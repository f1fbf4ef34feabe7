"""Memory, time and gradient error of one training step through a deep chain of couplings, by method.

The model is a chain of ``depth`` couplings, alternately :class:`invprox.flows.AffineCoupling` and
:class:`invprox.flows.AdditiveCoupling` (``channels`` channels, ``hidden`` hidden channels), each followed
by a reversal of the channel order so that successive couplings transform both halves (``--no-flip``
drops it). The last layer of every coupling network gets PyTorch's default initialisation instead of
Glow's zeros (``--init zero`` keeps the zeros), so that every block is a non-trivial map and every
parameter has a gradient. One step is ``loss = chain(x).square().mean(); loss.backward()``, with the
same weights (a deep copy of one model) and the same input for every method:

    standard       plain ``nn.Sequential`` of the blocks (ordinary autograd)
    checkpoint     ``torch.utils.checkpoint.checkpoint(block, h, use_reentrant=False)`` per block
    memcnn         ``memcnn.InvertibleModuleWrapper(fn=block, keep_input=False, keep_input_inverse=False)``
                   per block (memcnn 1.5: invert, then recompute, then backward)
    invprox        ``invprox.InvertibleChain(blocks)``: pure inversion, fused coupling rebuilds
    invprox_keep8  ``invprox.InvertibleChain(blocks, keep_every=8)`` (``--keep-every``)
    invprox_vjp8   ``invprox.InvertibleChain(blocks, vjp_blocks=8)`` (``--vjp-blocks``): one vector-Jacobian
                   product per 8 blocks, activation memory 8 blocks deep in the backward

Reported per method and depth:

* ``saved``: bytes saved for backward by the step's forward and loss, counted with saved-tensor hooks
  (:func:`invprox.core.memory.saved_tensor_bytes`, parameters excluded, each storage once).
* ``ctx``: bytes of tensors that custom autograd Functions keep as attributes of their context, which
  saved-tensor hooks do not see (invprox: one CPU RNG state per block; memcnn: its inputs and outputs,
  whose storages it frees), other than the chain's output (the loss saves it already). Closures are not
  searched: ``torch.utils.checkpoint`` keeps its per-block RNG state there, so it shows in ``peak`` only.
* ``peak``: the memory a training step adds at its peak above what is allocated before it, in the steady
  state (not the process's first step at full size). On CUDA: ``torch.cuda.max_memory_allocated`` during
  the step minus ``memory_allocated`` before it. On CPU: a fresh child process per method and depth (this
  script with ``--child``) builds the model, runs a warm-up step on a 1 x C x 4 x 4 input (initialises
  the libraries, allocates the parameters' ``.grad``), then two full steps, and reports for each the peak
  RSS during the step minus the RSS just before it (the peak is reset in between); the second step is
  ``peak``, the first ``peak_cold`` (JSON). Parameters and their ``.grad`` are not in ``peak``; gradients
  a method holds before it accumulates them are. See ``benchmarks/_common.py`` for why the child reads
  ``VmHWM`` rather than ``ru_maxrss`` (both are in the JSON).
* ``time``: wall time of forward + loss + backward, median over ``--repeats`` (methods interleaved, in a
  rotating order), and its ratio to the median of ``standard`` in the same run; on CPU also the CPU time
  of the process (``time.process_time``), which other processes on a shared machine disturb far less
  (with ``--threads 1`` it is the compute time itself).
* ``grad_err``: ``||g - g_std|| / ||g_std||`` over the concatenated parameter and input gradients, against
  ``standard`` in the same dtype; ``grad_err_f64``: against ``standard`` run in float64 (float32 runs
  only), which shows the float32 rounding floor that ``standard`` itself sits on.
* ``roundtrip`` (per depth): ``||f^-1(f(x)) - x|| / ||x||`` of the whole chain by block inversion, the
  drift that pure inversion accumulates.

``--drift DEPTH ...`` replaces the sweep by a study of drift at deep chains: the gradient error of pure
inversion and of ``keep_every`` against standard autograd (float32 and float64), and the round trip.

``--profile DEPTH`` splits the time of an invprox step at that depth with the engine's own
``torch.profiler`` spans (``invprox.forward``, ``invprox.state_capture``, ``invprox.backward``,
``invprox.rebuild``, ``invprox.vjp``, ``invprox.graph_leaves``; no monkeypatching): forward and its state
capture, and in the backward the rebuilds (for couplings one pass of the network with its graph, which also
gives the inverse), the vector-Jacobian products and the graph-leaf walk; plus the top operators of
``torch.profiler`` for invprox and standard.

Results go to ``<out>/engine_depth_<device>[_float64][_drift][_<tag>].json`` and ``.md`` (machine
information included).

Usage::

    python benchmarks/engine_depth.py                            # CPU, depths 1 4 16 64, defaults
    python benchmarks/engine_depth.py --device cuda --repeats 20
    python benchmarks/engine_depth.py --depths 1 4 --batch 4 --size 16 --repeats 3 --no-peak
    python benchmarks/engine_depth.py --float64 --methods standard invprox
    python benchmarks/engine_depth.py --profile 16               # with the time split at depth 16
    python benchmarks/engine_depth.py --drift 64 128 256          # pure-inversion drift at deep chains

Run ``python benchmarks/engine_depth.py --help`` for every option.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from functools import partial
from typing import Any, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import invprox  # noqa: E402

from _common import (  # noqa: E402
    child_report,
    command_line,
    describe_machine,
    fmt_bytes,
    machine_info,
    markdown_table,
    median,
    run_children,
    step_peak_rss,
    write_results,
)
from _harness import check_device, fmt_err, fmt_ratio, interleaved_times, rel_err, start  # noqa: E402
from engine_blocks import (  # noqa: E402
    DEFAULT_METHODS,
    METHODS,
    build_blocks,
    cuda_step_peak,
    f64_reference,
    fresh_step,
    make_input,
    make_model,
    measure_step,
    method_label,
    params_of,
    roundtrip_error,
    train_step,
    zero_grads,
)
from engine_drift import drift_study, render_drift  # noqa: E402
from engine_profile import profile, render_profile  # noqa: E402
from methods import import_memcnn  # noqa: E402


# -- peak-memory child ----------------------------------------------------------------------------------
def child_args(args, method: str, depth: int) -> List[str]:
    a = [
        "--child", method, "--depths", str(depth), "--batch", str(args.batch),
        "--channels", str(args.channels), "--size", str(args.size), "--hidden", str(args.hidden),
        "--keep-every", str(args.keep_every), "--vjp-blocks", str(args.vjp_blocks), "--seed", str(args.seed),
        "--init", args.init,
        "--device", "cpu", "--threads", str(torch.get_num_threads()),
    ]
    if args.float64:
        a.append("--float64")
    if not args.flip:
        a.append("--no-flip")
    return a


def child_main(args) -> None:
    """``--child METHOD``: build the model, warm up on a tiny input, report the peak RSS of two steps.

    The first step is the process's first at full size (``cold``: it also allocates what the libraries
    cache per shape, such as oneDNN's primitives and scratchpads); the second (``steady``) is what every
    later training step costs, and is the number reported. The peak is reset before each.
    """
    depth = args.depths[0]
    model, blocks = make_model(args.child, build_blocks(args, depth), args.keep_every, args.vjp_blocks)
    params = params_of(blocks)
    train_step(model, make_input(args, batch=1, size=4).requires_grad_())  # warm-up; .grad allocated
    out: Dict[str, Any] = {"method": args.child, "depth": depth}
    for phase in ("cold", "steady"):
        zero_grads(params, to_none=False)
        x = make_input(args).requires_grad_()
        out[phase] = step_peak_rss(partial(train_step, model, x))
        x = None
    out["delta"] = out["steady"]["delta"]
    out["delta_cold"] = out["cold"]["delta"]
    child_report(out)


# -- sweep ----------------------------------------------------------------------------------------------
def sweep(args) -> Dict[str, Any]:
    methods = list(args.methods)
    if "memcnn" in methods and import_memcnn() is None:
        print("memcnn is not installed: skipping it", file=sys.stderr)
        methods.remove("memcnn")
    rows: List[Dict[str, Any]] = []
    depth_info: List[Dict[str, Any]] = []
    for depth in args.depths:
        t_depth = time.perf_counter()
        blocks = build_blocks(args, depth)
        x0 = make_input(args)
        models = {m: make_model(m, blocks, args.keep_every, args.vjp_blocks) for m in methods}
        res: Dict[str, Dict[str, Any]] = {m: {} for m in methods}
        for m in methods:
            res[m].update(measure_step(*models[m], x0))
        ref64 = None
        if args.dtype == torch.float32 and not args.no_f64_ref:
            ref64 = f64_reference(blocks, x0)
        std_g = res["standard"]["grad"] if "standard" in res else None
        for m in methods:
            g = res[m].pop("grad")
            res[m]["grad_err"] = rel_err(g, std_g) if std_g is not None else None
            res[m]["grad_err_f64"] = rel_err(g, ref64) if ref64 is not None else None
        times = interleaved_times({m: partial(fresh_step, *models[m], x0) for m in methods}, args.repeats,
                                  args.device)
        for m in methods:
            res[m]["times"] = times[m]["wall"]
            res[m]["time"] = median(times[m]["wall"])
            res[m]["cpu_times"] = times[m]["cpu"]
            res[m]["cpu_time"] = median(times[m]["cpu"])
        if args.device.startswith("cuda"):
            for m in methods:
                res[m]["peak"] = cuda_step_peak(*models[m], x0)
        rt = roundtrip_error(blocks, x0)
        n_params = sum(p.numel() for p in params_of(blocks))
        del models
        gc.collect()
        if args.device == "cpu" and not args.no_peak:
            script = os.path.abspath(__file__)
            children = run_children(script, [child_args(args, m, depth) for m in methods], args.jobs, 1800)
            for m, c in zip(methods, children):
                res[m]["peak"] = c["delta"]
                res[m]["peak_cold"] = c["delta_cold"]
                res[m]["rss"] = c
        t_std = res["standard"]["time"] if "standard" in res else None
        c_std = res["standard"]["cpu_time"] if "standard" in res else None
        for m in methods:
            r = res[m]
            r.update(method=method_label(m, args.keep_every, args.vjp_blocks), depth=depth)
            r["time_ratio"] = r["time"] / t_std if t_std else None
            r["cpu_time_ratio"] = r["cpu_time"] / c_std if c_std else None
            rows.append(r)
        depth_info.append({
            "depth": depth, "roundtrip_err": rt, "params": n_params,
            "seconds": time.perf_counter() - t_depth,
        })
        print(f"depth {depth}: " + ", ".join(
            f"{method_label(m, args.keep_every, args.vjp_blocks)} {res[m]['time'] * 1e3:.0f} ms "
            f"({res[m]['cpu_time'] * 1e3:.0f} ms CPU)" for m in methods
        ) + f" ({time.perf_counter() - t_depth:.0f} s)", file=sys.stderr, flush=True)
    labels = [method_label(m, args.keep_every, args.vjp_blocks) for m in methods]
    return {"rows": rows, "depths": depth_info, "methods": labels}


def render(args, payload: Dict[str, Any]) -> str:
    info = payload["machine"]
    cfg = payload["config"]
    rows = payload["rows"]
    peak_name = "CUDA peak" if args.device.startswith("cuda") else "peak RSS"
    md = [
        f"# Engine vs depth ({args.device}, {cfg['dtype']})\n",
        f"Input {cfg['batch']} x {cfg['channels']} x {cfg['size']} x {cfg['size']}, hidden {cfg['hidden']}, "
        f"couplings alternately affine / additive{' with a channel flip after each' if cfg['flip'] else ''}; "
        f"{cfg['repeats']} repeats (median), methods interleaved. Machine: {describe_machine(info)}.\n",
        f"Command: `{payload['command']}`\n",
    ]
    cpu = args.device == "cpu"
    headers = ["depth", "method", "saved MiB", "ctx KiB", f"{peak_name} MiB", "wall ms", "x standard"]
    headers += ["CPU ms", "x standard"] if cpu else []
    headers += ["grad err", "grad err vs f64"]
    body = []
    for r in rows:
        row = [
            r["depth"], r["method"], fmt_bytes(r["saved"]), fmt_bytes(r["ctx"], "KiB", 1),
            fmt_bytes(r.get("peak")), f"{r['time'] * 1e3:.1f}", fmt_ratio(r["time_ratio"]),
        ]
        if cpu:
            row += [f"{r['cpu_time'] * 1e3:.1f}", fmt_ratio(r["cpu_time_ratio"])]
        row += [fmt_err(r["grad_err"]), fmt_err(r["grad_err_f64"])]
        body.append(row)
    md.append(markdown_table(headers, body, "rl" + "r" * (len(headers) - 2)))
    # scaling summary
    dmin, dmax = min(args.depths), max(args.depths)
    by = {(r["method"], r["depth"]): r for r in rows}
    summ = []
    for m in payload["methods"]:
        lo, hi = by.get((m, dmin)), by.get((m, dmax))
        if lo is None or hi is None:
            continue

        def ratio(key, lo=lo, hi=hi):
            a, b = lo.get(key), hi.get(key)
            return "-" if not a or b is None else f"{b / a:.2f}"

        def saved_ctx(r):
            return r["saved"] + r["ctx"]

        sc = "-" if not saved_ctx(lo) else f"{saved_ctx(hi) / saved_ctx(lo):.2f}"
        key = "cpu_time_ratio" if cpu else "time_ratio"
        summ.append([m, ratio("saved"), sc, ratio("peak"), fmt_ratio(hi[key]), fmt_err(hi["grad_err"])])
    md.append(f"\nScaling from depth {dmin} to depth {dmax}:\n")
    md.append(markdown_table(
        ["method", f"saved {dmax}/{dmin}", f"saved+ctx {dmax}/{dmin}", f"peak {dmax}/{dmin}",
         f"{'CPU' if cpu else 'wall'} time x standard at {dmax}", f"grad err at {dmax}"], summ))
    rt = ", ".join(f"{d['depth']}: {d['roundtrip_err']:.1e}" for d in payload["depths"])
    md.append("\nRound-trip error of the chain by inversion, ||f^-1(f(x)) - x|| / ||x|| "
              f"(depth: error): {rt}.\n")
    if payload.get("profile"):
        md += render_profile(payload["profile"])
    return "\n".join(md)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Memory, time and gradient error of one training step through a chain of couplings: "
        "standard autograd, torch.utils.checkpoint, memcnn, invprox (pure inversion and keep_every).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--depths", type=int, nargs="+", default=[1, 4, 16, 64], help="chain depths")
    p.add_argument("--batch", type=int, default=16, help="batch size of the input")
    p.add_argument("--channels", type=int, default=8, help="channels of the input (split in halves)")
    p.add_argument("--size", type=int, default=32, help="height and width")
    p.add_argument("--hidden", type=int, default=64, help="hidden channels of the coupling networks")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per method and depth (median)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS,
                   help="rebuild_floor: the least a fused-rebuild engine does per block (a measurement, "
                   "not an engine; engine_blocks.RebuildFloor)")
    p.add_argument("--keep-every", type=int, default=8, help="keep_every of the invprox_keep method")
    p.add_argument("--vjp-blocks", type=int, default=8,
                   help="vjp_blocks of the invprox_vjp method (one vector-Jacobian product per N blocks)")
    p.add_argument("--float64", action="store_true", help="run everything in float64")
    p.add_argument("--init", choices=["random", "zero"], default="random",
                   help="last layer of each coupling network: PyTorch default init or Glow's zeros")
    p.add_argument("--no-flip", dest="flip", action="store_false", default=argparse.SUPPRESS,
                   help="drop the channel reversal after each coupling")
    p.set_defaults(flip=True)
    p.add_argument("--no-peak", action="store_true", help="skip the peak-memory child processes (CPU)")
    p.add_argument("--no-f64-ref", action="store_true", help="skip the float64 reference gradient")
    p.add_argument("--profile", type=int, default=0, metavar="DEPTH",
                   help="also split the time of an invprox step at this depth (0: no)")
    p.add_argument("--drift", type=int, nargs="+", default=None, metavar="DEPTH",
                   help="instead of the sweep: gradient error of pure inversion and keep_every vs standard "
                   "at these depths (writes engine_depth_<device>_drift.*)")
    p.add_argument("--jobs", type=int, default=2,
                   help="peak-memory child processes run at a time (memory numbers do not depend on it)")
    p.add_argument("--tag", default="", help="suffix of the output files' names")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (0: torch's default). One thread keeps timings meaningful "
                   "on a shared CPU: with two threads and other jobs running, steps took 5-20x longer")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the input")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.relpath(__file__)), "results"),
                   help="output folder")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.dtype = torch.float64 if args.float64 else torch.float32
    check_device(p, args.device)
    if "standard" not in args.methods:
        print("without 'standard' there are no time ratios or gradient errors", file=sys.stderr)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    start(args.threads)
    if args.child:
        child_main(args)
        return
    t0 = time.perf_counter()
    if args.drift:
        result = drift_study(args, args.drift)
    else:
        result = sweep(args)
        if args.profile:
            result["profile"] = profile(args, args.profile)
    memcnn = import_memcnn()
    payload = {
        "benchmark": "engine_depth",
        "command": command_line(__file__, argv),
        "machine": machine_info(args.device, memcnn=getattr(memcnn, "__version__", None),
                                invprox=invprox.__version__),
        "config": {
            "depths": args.depths, "batch": args.batch, "channels": args.channels, "size": args.size,
            "hidden": args.hidden, "device": args.device, "dtype": str(args.dtype).replace("torch.", ""),
            "repeats": args.repeats, "keep_every": args.keep_every, "init": args.init, "flip": args.flip,
            "seed": args.seed, "loss": "chain(x).square().mean()", "threads": torch.get_num_threads(),
        },
        **result,
        "total_seconds": time.perf_counter() - t0,
    }
    stem = f"engine_depth_{args.device.split(':')[0]}" + ("_float64" if args.float64 else "")
    stem += ("_drift" if args.drift else "") + (f"_{args.tag}" if args.tag else "")
    md = render_drift(args, payload) if args.drift else render(args, payload)
    paths = write_results(args.out, stem, payload, md)
    print(md)
    print("wrote " + " and ".join(paths), file=sys.stderr)


if __name__ == "__main__":
    main()
