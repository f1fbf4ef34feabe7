"""The seed paper's set-up at its own scale, end to end in one command: pre-train a Glow, train flow prox,
U-Net prox and ResNet prox with an equal wall-clock budget, evaluate, write the table.

Paper scale (Wei et al., Table 1): 64x64 RGB faces (here ``celeba64``), Glow 3 levels x 32 steps x 512
hidden channels, K = 4 untied folds, batch 16, trained at sigma 0.20 and tested at 0.10 ... 0.25. Sized
for one GPU and 7 minutes: ``--glow-minutes`` (2.5) of maximum-likelihood pre-training, then
``--minutes`` (1.2) of wall time in training steps per solver (``invprox train --budget-clock wall``),
then the test on ``--n-test`` faces of ``celeba64/val``. Writes ``<out>/paper_scale.{md,json}`` (the
device named) and the evaluation to ``<out>/eval``; checkpoints go to ``--work`` (``runs/paper_scale``).
``--tiny`` runs the same pipeline at 16x16 with a 2 x 1 x 8 Glow in seconds, on any device
(the test suite runs it on the CPU).

Usage::

    python benchmarks/paper_scale.py --device cuda                 # on a GPU: about 7 minutes
    python benchmarks/paper_scale.py --tiny --data embedded --out /tmp/ps
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from invprox.train.evaluate import evaluate
from invprox.train.pretrain import pretrain
from invprox.train.solver_train import train_solver

ROOT = Path(__file__).resolve().parents[1]

PAPER = dict(size=64, levels=3, steps=32, hidden=512, K=4, batch=16, glow_batch=32, unet=64, resnet=128)
TINY = dict(size=16, levels=2, steps=1, hidden=8, K=2, batch=4, glow_batch=8, unet=4, resnet=4)


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()})"


def run(args: argparse.Namespace) -> Dict[str, Any]:
    cfg = TINY if args.tiny else PAPER
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    quiet = {"progress": False, "log": lambda s: None}
    shutil.rmtree(work, ignore_errors=True)  # pretrain and train refuse to overwrite an earlier run
    t0 = time.perf_counter()
    glow = pretrain(args.data, str(work / "glow"), size=cfg["size"], levels=cfg["levels"], steps=cfg["steps"],
                    hidden=cfg["hidden"], scale_min=0.5, batch=cfg["glow_batch"], epochs=1000,
                    max_minutes=args.glow_minutes, device=args.device, warmup=20 if args.tiny else 200,
                    n_val=2 * cfg["glow_batch"], **quiet)
    common = dict(size=cfg["size"], K=cfg["K"], batch=cfg["batch"], sigma=0.2, val_data="holdout",
                  n_val=2 * cfg["batch"], budget_minutes=args.minutes, budget_clock="wall", epochs=1000,
                  patience=0, val_every=max(1, args.val_every), device=args.device, lr_step=1e-2, **quiet)
    solvers = {
        "flow prox": dict(prox="flow", flow=str(work / "glow" / "flow.pt"), lr_net=3e-4),
        "U-Net prox": dict(prox="unet", features=cfg["unet"], depth=2, lr_net=1e-3),
        "ResNet prox": dict(prox="resnet", features=cfg["resnet"], n_blocks=2, lr_net=1e-3),
    }
    trained: Dict[str, Dict[str, Any]] = {}
    for name, kw in solvers.items():
        run_dir = work / kw["prox"]
        m = train_solver(args.data, str(run_dir), **common, **kw)
        trained[name] = {"steps": m["steps"], "wall_s": m["train_wall_s"],
                         "s_per_step": m["train_wall_s"] / max(m["steps"], 1),
                         "best_val_psnr": max(v["val_psnr"] for v in m["val"]), "solver": m["solver"]}
    ev = evaluate([t["solver"] for t in trained.values()], str(out / "eval"), names=list(trained),
                  data=args.data, split="val", limit=args.n_test, device=args.device, **quiet)
    result = {"device": device_name(args.device), "tiny": args.tiny, "config": cfg,
              "glow_bpd": glow.get("final_val_bpd"), "glow_minutes": args.glow_minutes,
              "minutes_per_solver": args.minutes, "trained": trained, "eval": ev["mean"],
              "total_minutes": (time.perf_counter() - t0) / 60, "torch": torch.__version__}
    (out / "paper_scale.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "paper_scale.md").write_text(render(result, ev["sigmas"]))
    return result


def render(r: Dict[str, Any], sigmas: List[float]) -> str:
    c = r["config"]
    lines = [f"Paper-scale Table 1 on {r['device']} ({'tiny' if r['tiny'] else 'paper'} set-up: "
             f"{c['size']}x{c['size']} RGB, Glow {c['levels']} x {c['steps']} x {c['hidden']}, K = {c['K']}, "
             f"batch {c['batch']}); Glow {r['glow_minutes']} min ({float(r['glow_bpd']):.3f} bits/dim), "
             f"{r['minutes_per_solver']} min of wall time per solver, {r['total_minutes']:.1f} min in all.",
             "",
             "| method | steps | s / step | " + " | ".join(f"sigma {s:g}" for s in sigmas) + " |",
             "|---|--:|--:|" + "--:|" * len(sigmas)]
    for name, cols in r["eval"].items():
        t = r["trained"].get(name)
        head = f"| {name} | {t['steps']} | {t['s_per_step']:.3f} |" if t else f"| {name} | | |"
        lines.append(head + "".join(f" {cols[str(s)]['psnr']:.2f} |" if str(s) in cols else " |"
                                    for s in sigmas))
    return "\n".join(lines) + "\n"


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default="celeba64")
    p.add_argument("--tiny", action="store_true", help="16x16, a 2 x 1 x 8 Glow, seconds (a smoke test)")
    p.add_argument("--glow-minutes", type=float, default=None, help="pre-training (2.5; tiny: 0.05)")
    p.add_argument("--minutes", type=float, default=None, help="wall minutes per solver (1.2; tiny: 0.03)")
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--n-test", type=int, default=None, help="test faces (600; tiny: 8)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "paper_scale"),
                   help="results: paper_scale.{md,json} and the evaluation (small files)")
    p.add_argument("--work", default=str(ROOT / "runs" / "paper_scale"),
                   help="checkpoints of the Glow and the solvers (large; replaced on every run)")
    args = p.parse_args(argv)
    args.glow_minutes = args.glow_minutes or (0.05 if args.tiny else 2.5)
    args.minutes = args.minutes or (0.03 if args.tiny else 1.2)
    args.n_test = args.n_test or (8 if args.tiny else 600)
    r = run(args)
    print((Path(args.out) / "paper_scale.md").read_text())
    return 0 if r else 1


if __name__ == "__main__":
    raise SystemExit(main())
