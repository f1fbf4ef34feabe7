"""How far has each kind of flow parameter moved in a trained flow prox, and how large are its gradients?

For a run of ``invprox train --prox flow`` (its ``solver.pt``; with ``--last`` the weights of
``checkpoint.pt``, e.g. of a run stopped by a non-finite loss), and per kind of parameter of the folds'
Glows (coupling networks of the flow steps, ActNorm, invertible 1x1 convolutions, learned split priors):

- **drift**: ``||theta - theta_0|| / ||theta_0||`` against the pre-trained Glow the run started from
  (``--prior``, default the run's ``--flow``);
- **gradient**: the root mean square of the MSE loss's gradient per element, on ``--batches`` batches of
  training faces at the run's sigma (standard autograd, the trained weights).

Adam moves every parameter by about the learning rate per step, whatever its gradient's size; a kind whose
gradient is orders of magnitude below the others' (its effect nearly cancels between ``f`` and
``g = f^-1``) still drifts at the full rate. Prints a Markdown table.

Usage::

    python benchmarks/flow_drift.py runs/table1/flow_dn_k1_coup3_split --last
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from invprox.data import make_dataset
from invprox.flows.glow import Glow
from invprox.flows.step import PARAMETER_KINDS, parameters_by_kind

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import load_trained_solver  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder of `invprox train --prox flow` (solver.pt, checkpoint.pt)")
    p.add_argument("--last", action="store_true", help="the weights of checkpoint.pt, not the best")
    p.add_argument("--prior", help="the pre-trained Glow (default: the run's --flow)")
    p.add_argument("--data", default="celeba64", help="training faces (default: %(default)s)")
    p.add_argument("--batches", type=int, default=8, help="batches of 8 faces for the gradients")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    solver, cfg = load_trained_solver(args.run, args.last)
    if cfg["prox"] != "flow":
        raise SystemExit(f"{args.run} is a {cfg['prox']} prox run, not a flow prox")
    prior = Glow.load(args.prior or cfg["flow"])
    if dict(prior.config) != {k: v for k, v in solver.flows[0].config.items() if k != "cond_channels"}:
        raise SystemExit("the run's Glows have another architecture than the prior (--widen?): "
                         "pass the prior they started from with --prior")
    solver.memory_efficient = False
    solver.train()
    ds = make_dataset(args.data, size=cfg["size"], channels=cfg["channels"], split="train")
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(ds), generator=g)[: 8 * args.batches].tolist()
    x = torch.stack([ds[i] for i in idx])
    solver.zero_grad()
    for i in range(0, len(x), 8):
        xb = x[i : i + 8]
        y = xb + cfg["sigma"] * torch.randn(xb.shape, generator=g)
        (((solver(y) - xb) ** 2).mean() / args.batches).backward()
    ref = parameters_by_kind(prior)
    folds = [parameters_by_kind(flow) for flow in solver.flows]
    rows = []
    for k in PARAMETER_KINDS:
        drift_num = drift_den = gsq = n = 0.0
        for fold in folds:
            for p_new, p_old in zip(fold[k], ref[k]):
                drift_num += float((p_new.detach() - p_old.detach()).pow(2).sum())
                drift_den += float(p_old.detach().pow(2).sum())
                if p_new.grad is not None:
                    gsq += float(p_new.grad.pow(2).sum())
                n += p_new.numel()
        if n:
            rows.append((k, int(n), (drift_num / max(drift_den, 1e-30)) ** 0.5, (gsq / n) ** 0.5))
    print(f"{args.run} ({'last' if args.last else 'best'} weights; gradients of the MSE on "
          f"{len(x)} training faces at sigma {cfg['sigma']})\n")
    print("| parameters | count | drift from the prior, relative | gradient, RMS per element |")
    print("|---|--:|--:|--:|")
    for k, n, drift, grad in rows:
        print(f"| {k} | {n:,} | {drift:.3g} | {grad:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
