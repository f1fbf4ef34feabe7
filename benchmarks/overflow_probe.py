"""Where does a trained flow solver overflow? The largest value after every block, on noisy faces.

Loads a run of ``invprox train`` (its ``solver.pt`` for the configuration, and the weights of
``checkpoint.pt`` with ``--last``: the last state, e.g. of a run stopped by a non-finite loss), runs it
under standard autograd without a graph on ``--n`` training faces with fresh noise of std ``--sigma``
(``--repeats`` draws), and prints how many outputs are not finite and the largest |value| after every
block where it exceeds ``--show-above``, in the chain's order (the first block where it jumps is where the
overflow starts). It also prints, per learned split prior, the range of its log-scale ``logs(h)``
(``z2 = (x2 - mean(h)) exp(-logs(h))``). ``--clamp-split B`` clamps every split prior's ``logs`` to
``[-B, B]`` for the probe (the library does not: see ``TABLE1.md``).

Usage::

    python benchmarks/overflow_probe.py runs/table1/flow_dn_prior --last
    python benchmarks/overflow_probe.py runs/table1/flow_dn_prior --last --clamp-split 8
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, Tuple

import torch

from invprox.data import make_dataset
from invprox.flows.layers import SplitPrior

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import load_trained_solver  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder of `invprox train` (solver.pt, checkpoint.pt)")
    p.add_argument("--last", action="store_true", help="the weights of checkpoint.pt, not the best")
    p.add_argument("--data", default="celeba64", help="training faces (default: %(default)s)")
    p.add_argument("--n", type=int, default=400, help="faces, evenly spaced over the training set")
    p.add_argument("--sigma", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=3, help="noise draws per face")
    p.add_argument("--clamp-split", type=float, default=0.0, help="clamp split priors' logs to [-B, B]")
    p.add_argument("--show-above", type=float, default=50.0, help="print blocks whose max |out| exceeds this")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    solver, cfg = load_trained_solver(args.run, args.last)
    solver.eval()
    solver.memory_efficient = False
    logs_range: Dict[str, Tuple[float, float]] = {}
    for name, m in solver.named_modules():
        if isinstance(m, SplitPrior):
            m.register_forward_hook(_split_hook(name, m, args.clamp_split, logs_range))
    top: Dict[int, float] = {}
    for j, block in enumerate(solver.chain.blocks):
        block.register_forward_hook(_max_hook(j, top))
    ds = make_dataset(args.data, size=cfg["size"], channels=cfg["channels"], split="train")
    idx = torch.linspace(0, len(ds) - 1, args.n).long().tolist()
    x = torch.stack([ds[i] for i in idx])
    g = torch.Generator().manual_seed(args.seed)
    bad = 0
    with torch.no_grad():
        for _ in range(args.repeats):
            for i in range(0, len(x), 50):
                xb = x[i : i + 50]
                out = solver(xb + args.sigma * torch.randn(xb.shape, generator=g))
                bad += int((~torch.isfinite(out).flatten(1).all(1)).sum())
    print(f"{bad} of {args.repeats * len(x)} outputs not finite (sigma {args.sigma}, "
          f"{'last' if args.last else 'best'} weights, split clamp {args.clamp_split or 'none'})")
    for j, v in sorted(top.items()):
        if v > args.show_above:
            b = solver.chain.blocks[j]
            inner = type(getattr(b, "block", b)).__name__
            print(f"  block {j:3d} ({type(b).__name__}/{inner}): max |out| {v:.3g}")
    for name, (lo, hi) in logs_range.items():
        print(f"  {name}: logs in [{lo:.2f}, {hi:.2f}]" if lo <= hi else f"  {name}: no finite logs")
    return 0


def _max_hook(j: int, top: Dict[int, float]):
    def hook(module, inputs, out):
        v = float(out.abs().amax()) if bool(torch.isfinite(out).all()) else float("inf")
        top[j] = max(top.get(j, 0.0), v)
    return hook


def _split_hook(name: str, m: SplitPrior, bound: float, logs_range: Dict[str, Tuple[float, float]]):
    if bound > 0:  # the probe's clamp: replaces the block's parameter function for this process only
        def params(x1, cond, m=m):
            h = m.net(x1)
            return -h[:, : m.c2], torch.exp(-h[:, m.c2 :].clamp(-bound, bound))
        m._params = params

    def hook(module, inputs, out):
        logs = m.net(inputs[0][:, : m.c1])[:, m.c2 :]
        logs = logs[torch.isfinite(logs)]
        lo, hi = logs_range.get(name, (float("inf"), float("-inf")))
        if logs.numel():
            lo, hi = min(lo, float(logs.min())), max(hi, float(logs.max()))
        logs_range[name] = (lo, hi)
    return hook


if __name__ == "__main__":
    sys.exit(main())
