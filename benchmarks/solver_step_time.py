"""Time of one training step of the flow-prox solver, invprox vs standard autograd, as the model grows.

The engine adds a fixed Python cost per block (a few hundred microseconds: the vector-Jacobian product
call, random/autocast state, buffer restore) on top of the 4/3 floor of a fused rebuild. A 4-fold solver
with a 2-level, 4-step Glow has 240 blocks, so on small models that cost dominates and on large ones it
vanishes. This script shows the trend on the CPU.

    python benchmarks/solver_step_time.py                       # writes results/solver_step_time_cpu.md
    python benchmarks/solver_step_time.py --configs 32:4 128:8   # hidden:batch pairs
    python benchmarks/solver_step_time.py --levels 3 --steps 8 --configs 64:8 --tag table1
                                                                 # the Table 1 flow prox (TABLE1.md)
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from invprox.flows import Glow  # noqa: E402
from invprox.physics import make_physics  # noqa: E402
from invprox.solvers import FlowProxSolver  # noqa: E402

from _common import command_line, describe_machine, machine_info, markdown_table, median, write_results  # noqa: E402
from _harness import interleaved_times  # noqa: E402


def measure(hidden: int, batch: int, K: int, size: int, repeats: int, keep_every, levels: int = 2,
            steps: int = 4, vjp_blocks: int = 1) -> dict:
    torch.manual_seed(0)
    glow = Glow(in_channels=3, image_size=size, levels=levels, steps=steps, hidden=hidden)
    x = torch.rand(batch, 3, size, size)
    glow.train()
    with torch.no_grad():
        glow(x - 0.5)  # ActNorm init
    eng = FlowProxSolver(glow, make_physics("denoising", (3, size, size)), K=K, keep_every=keep_every)
    eng.chain.vjp_blocks = vjp_blocks  # the engine's grouping of vector-Jacobian products
    std = copy.deepcopy(eng)
    std.memory_efficient = False
    y = x + 0.2 * torch.randn_like(x)

    def step(m):
        m.zero_grad()
        (m(y) - x).square().mean().backward()

    times = interleaved_times({"invprox": partial(step, eng), "standard": partial(step, std)}, repeats,
                              warmup=1)
    med = {k: median(v["cpu"]) for k, v in times.items()}
    return {"hidden": hidden, "batch": batch, "K": K, "blocks": len(eng.chain), "invprox_s": med["invprox"],
            "standard_s": med["standard"], "ratio": med["invprox"] / med["standard"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["32:4", "128:8", "256:16"], help="hidden:batch pairs")
    p.add_argument("--K", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--levels", type=int, default=2, help="Glow levels")
    p.add_argument("--steps", type=int, default=4, help="Glow steps per level")
    p.add_argument("--vjp-blocks", type=int, default=1,
                   help="the engine's vjp_blocks (InvertibleChain: one vector-Jacobian product per N blocks)")
    p.add_argument("--tag", default="", help="suffix of the output files' names")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for cfg in args.configs:
        hidden, batch = (int(v) for v in cfg.split(":"))
        for keep, label in ((None, "pure inversion"), ("fold", "one state per fold")):
            r = measure(hidden, batch, args.K, args.size, args.repeats, keep, args.levels, args.steps,
                        args.vjp_blocks)
            r["policy"] = label + (f", vjp_blocks {args.vjp_blocks}" if args.vjp_blocks > 1 else "")
            rows.append(r)
            print(f"hidden {hidden:4d} batch {batch:3d} {label:20s} invprox {r['invprox_s']:.3f} s  "
                  f"standard {r['standard_s']:.3f} s  ratio {r['ratio']:.2f}", flush=True)
    info = machine_info("cpu", threads=args.threads)
    table = markdown_table(
        ["hidden", "batch", "policy", "blocks", "invprox s", "standard s", "x standard"],
        [[r["hidden"], r["batch"], r["policy"], r["blocks"], f"{r['invprox_s']:.3f}",
          f"{r['standard_s']:.3f}", f"{r['ratio']:.2f}"] for r in rows],
    )
    command = command_line(__file__, argv)
    md = (f"# Flow-prox solver: time of one training step vs model size (cpu)\n\n"
          f"K = {args.K}, 3 x {args.size} x {args.size} images, "
          f"Glow {args.levels} levels x {args.steps} steps; "
          f"CPU process time (engine and standard interleaved), "
          f"median of {args.repeats}. {describe_machine(info)}\n\n"
          f"Command: `{command}`\n\n{table}\n")
    name = "solver_step_time_cpu" + (f"_{args.tag}" if args.tag else "")
    write_results(args.out, name, {"machine": info, "rows": rows}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
