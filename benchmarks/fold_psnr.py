"""What each fold of a trained solver does: PSNR after the start and after every fold.

Loads trained solvers (``solver.pt`` of ``invprox train``) and denoises the faces that Table 1 validates on
(the last ``--n`` faces of ``celeba64/train``, held out from training) at ``--sigma``, with one fixed noise
draw, and reports the PSNR of the start and of each iterate (``solver.iterates``). It shows whether a
K-fold solver refines its estimate fold by fold, uses its folds as one deep network (intermediate images
far from the target), or leaves folds unused (identities).

    python benchmarks/fold_psnr.py runs/table1/flow_dn_grow runs/table1/unet_dn_grow \\
        --out benchmarks/results --stem table1_fold_psnr
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from invprox.metrics import psnr  # noqa: E402
from invprox.train.pretrain import load_images  # noqa: E402
from invprox.train.solver_setup import load_solver  # noqa: E402


def fold_psnr(run: Path, x: torch.Tensor, y: torch.Tensor) -> Dict[str, Any]:
    solver, cfg = load_solver(run / "solver.pt")
    if cfg["task"] != "denoising":
        raise SystemExit(f"{run}: a {cfg['task']} solver; fold_psnr.py measures denoisers")
    with torch.no_grad():
        start = solver.start(y) + (0.5 if cfg["prox"] == "flow" else 0.0)
        its = [start] + solver.iterates(y)
    vals = [float(psnr(v.clamp(0, 1), x).mean()) for v in its]
    return {"run": run.name, "prox": cfg["prox"], "K": cfg["K"], "start": vals[0], "folds": vals[1:]}


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders holding solver.pt")
    p.add_argument("--data", default="celeba64")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--n", type=int, default=64, help="the last N training faces (Table 1's holdout)")
    p.add_argument("--sigma", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=5, help="seed of the noise draw")
    p.add_argument("--out", default=None, help="write <stem>.md and <stem>.json there")
    p.add_argument("--stem", default="fold_psnr")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    xt, _ = load_images(args.data, args.size, args.channels, None, None, args.n, 0)
    x = xt[-args.n:]
    y = x + args.sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(args.seed))
    rows = [fold_psnr(Path(r), x, y) for r in args.runs]
    k_max = max(r["K"] for r in rows)
    lines = [f"PSNR (dB) after the start and after each fold: the last {args.n} faces of {args.data} train "
             f"(held out), {args.size}x{args.size}, sigma {args.sigma}, noise seed {args.seed}", "",
             "| run | prox | start | " + " | ".join(f"fold {k + 1}" for k in range(k_max)) + " |",
             "|---|---|--:|" + "--:|" * k_max]
    for r in rows:
        cells = [f"{v:.2f}" for v in r["folds"]] + ["-"] * (k_max - r["K"])
        lines.append(f"| {r['run']} | {r['prox']} | {r['start']:.2f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.stem}.md").write_text(text)
        (out / f"{args.stem}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
