"""Does ``torch.compile`` buy the Table 1 solvers training steps on this machine?

Builds each solver as ``invprox train`` builds it for Table 1 (flow prox with standard autograd on the
pre-trained Glow, U-Net prox, ResNet prox; K = 4, batch 8, 3 x 32 x 32), and times one training step
(forward, MSE, backward) eager and compiled, interleaved, as process CPU time on one thread. The first
compiled call is timed on its own: it is the compilation, which a training budget in CPU minutes pays.
Inductor compiles in this process (``compile_threads = 1``), so its CPU time is counted; dynamo may
recompile each function up to ``--recompile-limit`` times (a Glow runs the same code at several shapes).
With ``--models``, trained solvers (run folders of ``invprox train``) instead, each on its own task and
training sigma (``step_cost.py`` measures the same files' other costs).

    python benchmarks/compile_step.py                    # writes results/compile_step_cpu.md
    python benchmarks/compile_step.py --prox flow --repeats 9
    python benchmarks/compile_step.py --models runs/table1/unet_dn_k1_cos_m2 --tag trained
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from functools import partial

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from invprox.physics import make_physics  # noqa: E402
from invprox.train.solver_setup import build_solver, load_flow  # noqa: E402

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
from _harness import interleaved_times, start  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the Table 1 solvers (benchmarks/table1.sh), sized alike (2.5-3 M parameters)
PROX = {"flow": {"standard_autograd": True, "lam_per": "level"},
        "unet": {"features": 40, "depth": 2},
        "resnet": {"features": 128, "n_blocks": 2}}


def solver_for(prox: str, args) -> torch.nn.Module:
    cfg = {"prox": prox, "K": args.K, "channels": 3, "size": args.size, "start": "smooth", **PROX[prox]}
    if args.features and prox != "flow":
        cfg["features"] = args.features
    phys = make_physics("denoising", (3, args.size, args.size))
    flow = load_flow(args.flow, args.size, 3) if prox == "flow" else None
    torch.manual_seed(0)
    return build_solver(cfg, phys, flow).train()


def trained_solver(run: str, args):
    """A trained solver (``run/solver.pt``), its operator, a batch of random images in [0, 1] (timing only:
    the images' content does not change the step's cost) and their measurements at its training sigma."""
    solver, cfg, op = trained_task(run, seed=1)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, cfg["channels"], cfg["size"], cfg["size"], generator=g)
    return solver, op, x, op.measure(x, cfg["sigma"], g), cfg["prox"]


def measure(prox: str, args, run: str | None = None) -> dict:
    if run is None:
        eager, op = solver_for(prox, args), None
        g = torch.Generator().manual_seed(1)
        x = torch.rand(args.batch, 3, args.size, args.size, generator=g)
        y = x + 0.2 * torch.randn(x.shape, generator=g)
    else:
        eager, op, x, y, prox = trained_solver(run, args)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, backend=args.backend)
    call = (lambda model: model(y)) if op is None else (lambda model: model(y, op))

    def step(model, params):
        for p in params:
            p.grad = None
        F.mse_loss(call(model), x).backward()

    c0, w0 = time.process_time(), time.perf_counter()
    step(compiled, list(compiled_module.parameters()))
    compile_cpu, compile_wall = time.process_time() - c0, time.perf_counter() - w0
    with torch.no_grad():  # the compiled module computes what the eager one does
        err = float((call(compiled) - call(eager)).norm() / call(eager).norm())
    times = interleaved_times({"eager": partial(step, eager, list(eager.parameters())),
                               "compiled": partial(step, compiled, list(compiled_module.parameters()))},
                              args.repeats, warmup=1)
    med = {k: median(v["cpu"]) for k, v in times.items()}
    name = prox if run is None else f"{os.path.basename(os.path.normpath(run))} ({prox})"
    return {"prox": name, "eager_s": med["eager"], "compiled_s": med["compiled"],
            "speedup": med["eager"] / med["compiled"], "compile_cpu_s": compile_cpu,
            "compile_wall_s": compile_wall, "output_rel_err": err,
            "breakeven_steps": (compile_cpu / (med["eager"] - med["compiled"])
                                if med["compiled"] < med["eager"] else None)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prox", nargs="+", default=list(PROX), choices=list(PROX))
    p.add_argument("--models", nargs="+", default=None, metavar="RUN",
                   help="trained solvers (run folders holding solver.pt) instead of --prox's recipes")
    p.add_argument("--flow", default=os.path.join(ROOT, "benchmarks", "results", "glow_celeba32_cos.pt"),
                   help="the pre-trained Glow of the flow prox")
    p.add_argument("--K", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--features", type=int, default=None, help="CNN feature maps (default: Table 1's)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backend", default="inductor", help="torch.compile backend ('eager': tracing only)")
    p.add_argument("--recompile-limit", type=int, default=64, help="torch._dynamo's, per function")
    p.add_argument("--tag", default="", help="suffix of the output files' names")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = p.parse_args(argv)
    missing = missing_solvers(args.models or [])
    if missing:
        p.error(f"no solver.pt in {', '.join(missing)}")
    start(args.threads)
    torch._inductor.config.compile_threads = 1  # compile in this process: its CPU time is counted
    # a Glow calls the same layer code at each level's channel count (and forward and inverse): without a
    # higher limit dynamo stops recompiling after 8 shapes and runs the rest eagerly
    torch._dynamo.config.recompile_limit = args.recompile_limit
    torch._dynamo.config.accumulated_recompile_limit = max(256, 4 * args.recompile_limit)
    rows = []
    for prox, run in ([(None, m) for m in args.models] if args.models else [(x, None) for x in args.prox]):
        r = measure(prox, args, run)
        rows.append(r)
        print(f"{r['prox']:7s} eager {r['eager_s']:.3f} s  compiled {r['compiled_s']:.3f} s  "
              f"x{r['speedup']:.2f}  "
              f"compile {r['compile_cpu_s']:.0f} CPU s", flush=True)
    info = machine_info("cpu", threads=args.threads)
    table = markdown_table(
        ["prox", "eager s/step", "compiled s/step", "speed-up", "compilation CPU s (wall s)",
         "steps to pay it back", "output rel. error"],
        [[r["prox"], f"{r['eager_s']:.3f}", f"{r['compiled_s']:.3f}", f"{r['speedup']:.2f}",
          f"{r['compile_cpu_s']:.0f} ({r['compile_wall_s']:.0f})",
          "never" if r["breakeven_steps"] is None else f"{r['breakeven_steps']:.0f}",
          f"{r['output_rel_err']:.1e}"] for r in rows],
    )
    command = command_line(__file__, argv)
    what = (f"trained solvers (each its own K, task and training sigma; random images in [0, 1]), batch "
            f"{args.batch}" if args.models
            else f"K = {args.K}, batch {args.batch}, 3 x {args.size} x {args.size}")
    md = (f"# torch.compile of a Table 1 training step (cpu, backend {args.backend})\n\n"
          f"{what}; forward + MSE + backward, "
          f"process CPU time, eager and compiled interleaved, median of {args.repeats}; the first "
          f"compiled call (the compilation) timed apart. {describe_machine(info)}\n\n"
          f"Command: `{command}`\n\n{table}\n")
    name = f"compile_step_cpu{'_' + args.tag if args.tag else ''}"
    write_results(args.out, name, {"machine": info, "backend": args.backend, "rows": rows}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
