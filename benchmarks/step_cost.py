"""What a training step of a trained solver costs on this machine, and where the time goes.

Loads trained solvers (``solver.pt`` of ``invprox train``, e.g. Table 1's runs) and times their training
step as ``invprox train`` takes it: forward on a batch of noisy faces, MSE, backward, the gradient norm
(``clip_grad_norm_``), Adam's step. Process CPU time on ``--threads`` torch threads, medians of interleaved
repeats after a warm-up. Four probes, each optional (``--probes``):

* ``batch``: the step at each of ``--batches`` (fused Adam, as ``invprox train`` uses): ms per step and
  per image;
* ``adam``: Adam's step alone at the first batch size, with torch's per-tensor loop, ``foreach`` and the
  fused kernel, and its share of the step;
* ``bf16``: forward + backward under CPU bfloat16 autocast against float32 (interleaved), and how far the
  bfloat16 output is from the float32 one;
* ``profile``: ``torch.profiler`` over a few steps: the share of self CPU time in convolutions (forward
  and backward), in matrix products, in Adam, and the ops that take the most.

For ``torch.compile`` of the same files, ``compile_step.py --models``.

    python benchmarks/step_cost.py runs/table1/flow_dn_k1_coup10_cos_drop2_cond_untie \\
        runs/table1/unet_dn_k1_cos_m2 --out benchmarks/results --stem table1_step_cost
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from invprox.train.pretrain import load_images  # noqa: E402

from _common import (  # noqa: E402
    command_line,
    describe_machine,
    machine_info,
    markdown_table,
    median,
    missing_solvers,
    trained_task,
    write_results,
)
from _harness import interleaved_times, rel_err, start  # noqa: E402

PROBES = ("batch", "adam", "bf16", "profile")
#: the kinds of profiler op a step's time is split into; everything else is "other"
KINDS = ("convolution", "matrix product", "Adam")
_MATMUL = {"mm", "bmm", "addmm", "baddbmm", "addbmm", "addmv", "mv", "dot", "matmul", "linear"}


def op_kind(name: str) -> str:
    """The kind of a profiler op (one of :data:`KINDS` or ``"other"``), by its name after ``aten::``:
    convolutions forward and backward (oneDNN or not), matrix products and ``linalg`` factorisations, Adam."""
    base = name.split("::")[-1].lower()
    if "convolution" in base or "conv2d" in base or "conv_depthwise" in base:
        return "convolution"
    if base in _MATMUL or base.startswith("linalg_"):
        return "matrix product"
    if "adam" in base:
        return "Adam"
    return "other"


class Step:
    """One training step of ``solver`` on a fixed batch, as ``invprox train`` takes it."""

    def __init__(self, solver: torch.nn.Module, op: torch.nn.Module, x: Tensor, y: Tensor, opt: Any):
        self.solver, self.op, self.x, self.y, self.opt = solver, op, x, y, opt

    def forward_backward(self, autocast: bool = False) -> Tensor:
        self.solver.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = self.solver(self.y, self.op)
        ((out.float() - self.x) ** 2).mean().backward()
        torch.nn.utils.clip_grad_norm_(self.solver.parameters(), float("inf"))
        return out.detach().float()

    def __call__(self) -> None:
        self.forward_backward()
        self.opt.step()


def med_ms(times: Dict[str, Dict[str, List[float]]], name: str) -> float:
    return 1e3 * median(times[name]["cpu"])


def measure(run: Path, images: Tensor, args) -> Dict[str, Any]:
    solver, cfg, op = trained_task(str(run), args.seed)
    size, channels = cfg["size"], cfg["channels"]
    if images.shape[1:] != (channels, size, size):
        raise SystemExit(f"{run}: a solver for {channels} x {size} x {size} images; the faces loaded are "
                         f"{tuple(images.shape[1:])} (pass --size / --channels to match)")
    sigma = args.sigma if args.sigma is not None else cfg["sigma"]
    params = [p for p in solver.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    # learning rate 1e-12: the optimizer does all its work, the weights stay where training left them
    adam = {kind: torch.optim.Adam(params, lr=1e-12, **kw) for kind, kw in
            (("loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True}))}

    def step_at(b: int) -> Step:
        x = images[:b]
        y = op.measure(x, sigma, torch.Generator().manual_seed(args.seed))
        return Step(solver, op, x, y, adam["fused"])

    row: Dict[str, Any] = {"run": run.name, "prox": cfg["prox"], "K": cfg["K"], "task": cfg["task"],
                           "sigma": sigma, "tensors": len(params), "parameters": n_params}
    first = step_at(args.batches[0])
    if "batch" in args.probes:
        steps = {f"batch {b}": step_at(b) for b in args.batches}
        t = interleaved_times(steps, args.repeats, warmup=args.warmup)
        row["batch"] = [{"batch": b, "ms_step": med_ms(t, f"batch {b}"),
                         "ms_image": med_ms(t, f"batch {b}") / b} for b in args.batches]
    if "adam" in args.probes:
        first.forward_backward()  # gradients for the optimizers to use
        t = interleaved_times({k: o.step for k, o in adam.items()}, args.repeats * 3, warmup=args.warmup)
        t_step = interleaved_times({"step": first}, args.repeats, warmup=args.warmup)
        row["adam"] = {k: med_ms(t, k) for k in adam}
        row["adam"]["step_fused"] = med_ms(t_step, "step")
    if "bf16" in args.probes:
        out32 = first.forward_backward()
        out16 = first.forward_backward(autocast=True)
        t = interleaved_times({"float32": first.forward_backward,
                               "bfloat16": partial(first.forward_backward, True)}, args.repeats,
                              warmup=args.warmup)
        row["bf16"] = {"float32_ms": med_ms(t, "float32"), "bfloat16_ms": med_ms(t, "bfloat16"),
                       "output_rel_err": rel_err(out16, out32)}
    if "profile" in args.probes:
        row["profile"] = profile(first, args.profile_steps, args.top)
    return row


def profile(step: Callable[[], None], n: int, top: int) -> Dict[str, Any]:
    """Self CPU time of ``n`` steps by kind of op (:func:`op_kind`), and the ``top`` ops."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    kinds: Dict[str, float] = defaultdict(float)
    for e in events:
        kinds[op_kind(e.key)] += e.self_cpu_time_total
    ops = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    return {"steps": n, "self_cpu_ms_per_step": total / 1e3 / n,
            "share": {k: kinds.get(k, 0.0) / total for k in (*KINDS, "other")},
            "top": [{"op": e.key, "share": e.self_cpu_time_total / total, "calls_per_step": e.count / n}
                    for e in ops]}


def report(rows: List[Dict[str, Any]], args, info: Dict[str, Any], command: str) -> str:
    parts = [f"# Training-step cost of trained solvers ({describe_machine(info)})", "",
             f"Command: `{command}`", "",
             f"Process CPU time, medians of {args.repeats} interleaved repeats after {args.warmup} warm-up "
             f"round(s); one step = forward, MSE, backward, gradient norm, Adam (as `invprox train`). Faces: "
             f"the first {max(args.batches)} of `{args.data}` train, {args.size} x {args.size}.", ""]
    runs = [f"{r['run']} ({r['prox']}, K {r['K']}, {r['tensors']} tensors, {r['parameters'] / 1e6:.2f} M)"
            for r in rows]
    if "batch" in args.probes:
        parts += ["## Step cost against the batch (fused Adam)", "", markdown_table(
            ["solver", *[f"batch {b}: ms / step (ms / image)" for b in args.batches]],
            [[name, *[f"{c['ms_step']:.1f} ({c['ms_image']:.2f})" for c in r["batch"]]]
             for name, r in zip(runs, rows)]), ""]
    if "adam" in args.probes:
        parts += [f"## Adam's step alone (batch {args.batches[0]})", "", markdown_table(
            ["solver", "per-tensor loop ms", "foreach ms", "fused ms", "whole step ms (fused)",
             "loop's share of a step"],
            [[name, f"{r['adam']['loop']:.2f}", f"{r['adam']['foreach']:.2f}", f"{r['adam']['fused']:.2f}",
              f"{r['adam']['step_fused']:.1f}",
              f"{r['adam']['loop'] / (r['adam']['step_fused'] - r['adam']['fused'] + r['adam']['loop']):.1%}"]
             for name, r in zip(runs, rows)]), ""]
    if "bf16" in args.probes:
        parts += [f"## bfloat16 autocast (forward + backward, batch {args.batches[0]})", "", markdown_table(
            ["solver", "float32 ms", "bfloat16 ms", "speed-up", "output rel. difference"],
            [[name, f"{r['bf16']['float32_ms']:.1f}", f"{r['bf16']['bfloat16_ms']:.1f}",
              f"{r['bf16']['float32_ms'] / r['bf16']['bfloat16_ms']:.2f}x",
              f"{r['bf16']['output_rel_err']:.1e}"]
             for name, r in zip(runs, rows)]), ""]
    if "profile" in args.probes:
        kinds = [*KINDS, "other"]
        parts += [f"## Where a step's self CPU time goes (torch.profiler, batch {args.batches[0]}, "
                  f"{args.profile_steps} steps)", "", markdown_table(
                      ["solver", "profiled ms / step", *kinds],
                      [[name, f"{r['profile']['self_cpu_ms_per_step']:.1f}",
                        *[f"{r['profile']['share'][k]:.0%}" for k in kinds]]
                       for name, r in zip(runs, rows)]), ""]
        for name, r in zip(runs, rows):
            parts += [f"Top ops of {name}:", "", markdown_table(
                ["op", "share", "calls / step"],
                [[o["op"], f"{o['share']:.1%}", f"{o['calls_per_step']:.0f}"]
                 for o in r["profile"]["top"]]), ""]
    return "\n".join(parts)


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders holding solver.pt")
    p.add_argument("--probes", nargs="+", default=list(PROBES), choices=PROBES)
    p.add_argument("--data", default="celeba64")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--sigma", type=float, default=None,
                   help="noise level (default: each run's training sigma)")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--top", type=int, default=8, help="ops listed per solver in the profile")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write <stem>.md and <stem>.json there")
    p.add_argument("--stem", default="step_cost")
    args = p.parse_args(argv)
    if any(b < 1 for b in args.batches) or args.repeats < 1 or args.warmup < 0 or args.profile_steps < 1:
        p.error("--batches and --repeats need values >= 1, --warmup >= 0, --profile-steps >= 1")
    missing = missing_solvers(args.runs)
    if missing:
        p.error(f"no solver.pt in {', '.join(missing)}")
    start(args.threads)
    xt, _ = load_images(args.data, args.size, args.channels, None, None, max(args.batches), 0)
    if len(xt) < max(args.batches):
        p.error(f"{args.data} has {len(xt)} training images, fewer than batch {max(args.batches)}")
    rows = []
    for run in args.runs:
        rows.append(measure(Path(run), xt[:max(args.batches)], args))
        print(f"{run}: done", flush=True)
    info = machine_info("cpu", threads=args.threads)
    command = command_line(__file__, argv)
    md = report(rows, args, info, command)
    if args.out:
        write_results(args.out, args.stem, {"machine": info, "command": command, "rows": rows}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
