"""The trade-off invprox exists for: PSNR vs the number of folds K, next to the activation memory each K
costs with and without the engine.

Reads the flow solvers trained by ``benchmarks/table1.sh k_sweep`` (``runs/table1/k<K>/solver.pt``: the
new defaults, the same CPU budget for every K), scores each on the first ``--n-test`` faces of
``celeba64/val`` at sigma 0.20 (fixed noise, seed 0), and measures the bytes saved for backward by one
training forward pass at the run's batch size, through the engine and with standard autograd (parameters
apart). Writes ``benchmarks/results/psnr_memory_k.{json,md,png}``.

Usage::

    python benchmarks/psnr_memory_k.py --ks 1 2 4 8 16
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any, Dict, List

import torch

from invprox.core.memory import saved_tensor_bytes
from invprox.data import make_dataset
from invprox.metrics import psnr
from invprox.train.solver_setup import load_solver

ROOT = Path(__file__).resolve().parents[1]


def measure(runs_dir: Path, K: int, n_test: int, sigma: float, prefix: str = "k") -> Dict[str, Any]:
    run = runs_dir / f"{prefix}{K}"
    solver, cfg = load_solver(run / "solver.pt")
    metrics = json.loads((run / "metrics.json").read_text())
    ds = make_dataset("celeba64", size=cfg["size"], channels=cfg["channels"], split="val")
    x = torch.stack([ds[i] for i in range(min(n_test, len(ds)))])
    y = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = torch.cat([solver(y[i : i + 32]) for i in range(0, len(y), 32)])
    row: Dict[str, Any] = {"K": K, "psnr": float(psnr(out.clamp(0, 1), x).mean()),
                           "noisy_psnr": float(psnr(y.clamp(0, 1), x).mean()),
                           "calibrated_psnr": (metrics.get("calibration") or {}).get("psnr"),
                           "steps": metrics["steps"], "train_cpu_s": metrics["train_cpu_s"]}
    solver.train()
    xb, yb = x[: cfg["batch"]], y[: cfg["batch"]]
    for name, eff in (("invprox", True), ("standard", False)):
        solver.memory_efficient = eff
        loss, rec = saved_tensor_bytes(lambda: ((solver(yb) - xb) ** 2).mean(), exclude=solver.parameters())
        row[f"{name}_bytes"] = rec.bytes
        del loss
    row["param_bytes"] = sum(p.numel() * p.element_size() for p in solver.parameters())
    return row


def render(rows: List[Dict[str, Any]], n_test: int, sigma: float) -> str:
    lines = [f"Flow prox, denoising sigma {sigma}, {n_test} unseen faces (celeba64/val), 32x32; every K "
             f"trained for the same CPU budget ({rows[0]['train_cpu_s'] / 60:.0f} min, one thread). "
             "Activations: bytes saved for backward by one training forward at batch 8.", "",
             "| K | steps in budget | calibrated, untrained (train pairs) | PSNR after training | "
             "activations: standard | invprox | parameters |", "|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(f"| {r['K']} | {r['steps']} | {r['calibrated_psnr']:.2f} | {r['psnr']:.2f} | "
                     f"{r['standard_bytes'] / 2**20:.1f} MiB | {r['invprox_bytes'] / 2**20:.2f} MiB | "
                     f"{r['param_bytes'] / 2**20:.1f} MiB |")
    lines += ["", f"Noisy input: {rows[0]['noisy_psnr']:.2f} dB. Machine: {platform.processor() or 'CPU'}, "
              f"torch {torch.__version__}."]
    return "\n".join(lines) + "\n"


def plot(rows: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ks = [r["K"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ks, [r["psnr"] for r in rows], "o-", label="trained (equal budget)")
    a.plot(ks, [r["calibrated_psnr"] for r in rows], "s--", label="calibrated, untrained")
    a.axhline(rows[0]["noisy_psnr"], color="gray", ls=":", label="noisy input")
    a.set_xscale("log", base=2)
    a.set_xlabel("folds K")
    a.set_ylabel("PSNR (dB)")
    a.legend()
    for name, style in (("standard", "o-"), ("invprox", "s-")):
        b.plot(ks, [r[f"{name}_bytes"] / 2**20 for r in rows], style, label=f"activations, {name}")
    b.plot(ks, [r["param_bytes"] / 2**20 for r in rows], "k:", label="parameters")
    b.set_xscale("log", base=2)
    b.set_yscale("log")
    b.set_xlabel("folds K")
    b.set_ylabel("MiB (one training step, batch 8)")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "table1"))
    p.add_argument("--n-test", type=int, default=64)
    p.add_argument("--sigma", type=float, default=0.2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--prefix", default="k", help="the runs are RUNS_DIR/<prefix><K>")
    p.add_argument("--stem", default="psnr_memory_k", help="name of the output files")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = [measure(Path(args.runs_dir), K, args.n_test, args.sigma, args.prefix) for K in args.ks]
    out = Path(args.out)
    (out / f"{args.stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / f"{args.stem}.md").write_text(render(rows, args.n_test, args.sigma))
    plot(rows, out / f"{args.stem}.png")
    print(render(rows, args.n_test, args.sigma))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
