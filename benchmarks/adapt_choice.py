"""The noise-level adaptation of trained solvers, chosen on held-out images and then tested.

``invprox eval --adapt-start P --adapt-lam Q`` scales a solver's smooth-start weight by
``(sigma / sigma_train) ** P`` and a flow prox's latent shrinkage by ``(sigma / sigma_train) ** Q``
(:func:`invprox.solvers.adapt.noise_adapted`). This script picks ``(P, Q)`` per solver from a grid by the
mean PSNR over ``--sigmas`` on the images the solver was validated on in training (``--split
validation``: with ``--val-data holdout``, a held-out slice of the training set, never the test images),
then tests every solver on the test images twice: as trained (``P = Q = 0``) and with its chosen exponents.

    python benchmarks/adapt_choice.py --model flow=runs/table1/flow/solver.pt \\
        --model unet=runs/table1/unet/solver.pt --sigmas 0.10 0.20 0.30 0.40 --stem table1_ood_heldout

CNN solvers have no shrinkage: their grid is over ``P`` alone. Writes ``results/<stem>.{md,json}``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from invprox.train.evaluate import evaluate  # noqa: E402
from invprox.train.solver_setup import load_solver  # noqa: E402

from _common import command_line, describe_machine, machine_info, markdown_table, write_results  # noqa: E402


def _mean_psnr(path: str, name: str, out: str, split: str, sigmas: List[float], p: float, q: float,
               limit, seed: int) -> Dict[float, float]:
    s = evaluate([path], out, names=[name], sigmas=sigmas, split=split, limit=limit, adapt_start=p,
                 adapt_lam=q, seed=seed, progress=False, log=lambda m: None, grid_n=1)
    return {float(k): float(v["psnr"]) for k, v in s["mean"][name].items()}


def choose(path: str, name: str, grid: List[float], sigmas: List[float], tmp: str, seed: int
           ) -> Tuple[Tuple[float, float], List[Dict]]:
    """``((P, Q), rows)``: the exponents of best mean validation PSNR over ``sigmas`` (ties: the smaller),
    and every grid point's validation PSNR."""
    _, cfg = load_solver(path)
    qs = grid if cfg["prox"] == "flow" else [0.0]
    rows = []
    for p, q in itertools.product(grid, qs):
        psnr = _mean_psnr(path, name, os.path.join(tmp, f"{name}_{p}_{q}"), "validation", sigmas, p, q,
                          None, seed)
        rows.append({"P": p, "Q": q, "psnr": psnr, "mean": sum(psnr.values()) / len(psnr)})
    best = max(rows, key=lambda r: (round(r["mean"], 9), -r["P"], -r["Q"]))
    return (best["P"], best["Q"]), rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                    help="a trained solver.pt and its label (repeatable)")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40])
    ap.add_argument("--grid", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5, 2.0],
                    help="exponents tried for P (and for Q, flow prox)")
    ap.add_argument("--test-split", default="val", help="split of the test images")
    ap.add_argument("--limit", type=int, default=None, help="test on at most this many images")
    ap.add_argument("--seed", type=int, default=0, help="seed of the measurements")
    ap.add_argument("--stem", default="adapt_choice", help="name of the output files")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    models = []
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not os.path.isfile(path):
            ap.error(f"--model wants NAME=PATH of an existing solver.pt, got {spec!r}")
        models.append((name, path))
    sig = [float(s) for s in args.sigmas]
    result = {"sigmas": sig, "grid": args.grid, "models": {}}
    rows_md = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in models:
            (p, q), grid_rows = choose(path, name, args.grid, sig, tmp, args.seed)
            test = {}
            for label, pq in (("as trained", (0.0, 0.0)), (f"P = {p:g}, Q = {q:g}", (p, q))):
                test[label] = _mean_psnr(path, name, os.path.join(tmp, f"test_{name}_{pq}"), args.test_split,
                                         sig, pq[0], pq[1], args.limit, args.seed)
                rows_md.append([name, label, *[f"{test[label][s]:.2f}" for s in sig]])
            result["models"][name] = {"path": path, "chosen": {"P": p, "Q": q}, "validation": grid_rows,
                                      "test": test}
            print(f"{name}: chose P = {p:g}, Q = {q:g}", flush=True)
    info = machine_info("cpu")
    command = command_line(__file__, argv)
    md = (f"# Noise-level adaptation chosen on held-out images, then tested\n\n"
          f"Exponents (P: smooth start, Q: flow prox's shrinkage) chosen per solver from {args.grid} by the "
          f"mean PSNR over the noise levels on the images each solver was validated on in training "
          f"(`--split validation`); test: split `{args.test_split}`"
          f"{f', first {args.limit} images' if args.limit else ''}. {describe_machine(info)}\n\n"
          f"Command: `{command}`\n\n"
          + markdown_table(["solver", "exponents", *[f"sigma {s:g}" for s in sig]], rows_md) + "\n")
    write_results(args.out, args.stem, {"machine": info, **result}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
