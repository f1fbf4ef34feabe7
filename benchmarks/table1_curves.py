"""Learning curves and training cost of the Table 1 runs (``benchmarks/table1.sh denoise``).

Reads ``runs/table1/<run>/metrics.json`` of the named runs (of a run no longer in ``runs/``, the copy
``benchmarks/table1.sh`` keeps in ``benchmarks/results``) and writes

* ``benchmarks/results/table1_curves.png``: validation PSNR (held-out training faces) against the CPU
  minutes spent in training steps, one curve per run (a run grown from a smaller one, ``--init-from``,
  starts at its source's minutes);
* ``benchmarks/results/table1_training.md``: per run, steps done in the budget, CPU seconds per step, the
  calibrated start, the best validation PSNR and when it was reached; with ``--step-time``, a measured
  forward + backward time per training step of each solver (median, one thread), the flow solver through
  the engine and with standard autograd.

Usage::

    python benchmarks/table1_curves.py --runs flow_dn unet_dn resnet_dn flow_dn_lr1e-3 --step-time
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import median, run_record  # noqa: E402
from _harness import interleaved_times  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_runs(runs_dir: Path, names: List[str], results_dir: Path | None = None) -> Dict[str, Dict[str, Any]]:
    return {n: json.loads(run_record(runs_dir, n, "metrics", results_dir).read_text()) for n in names}


def offset_minutes(m: Dict[str, Any]) -> float:
    """CPU minutes spent before the run: its source's training, for a run grown with ``--init-from``."""
    return ((m.get("init_from") or {}).get("train_cpu_s") or 0.0) / 60


def plot_curves(runs: Dict[str, Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    # one colour family per prox, a shade and a line style per run within it
    maps = {"flow": "Blues", "unet": "Oranges", "resnet": "Greens"}
    count: Dict[str, int] = {}
    for m in runs.values():
        count[m["config"]["prox"]] = count.get(m["config"]["prox"], 0) + 1
    styles, seen = ["-", "--", ":", "-."], {}
    lows = []
    for name, m in runs.items():
        t0 = offset_minutes(m)
        pts = [(t0 + v["train_cpu_s"] / 60, v["val_psnr"]) for v in m["val"] if "train_cpu_s" in v]
        if pts:
            prox = m["config"]["prox"]
            k = seen[prox] = seen.get(prox, -1) + 1
            shade = 0.85 - 0.5 * k / max(count[prox] - 1, 1)
            colour = plt.get_cmap(maps.get(prox, "Greys"))(shade)
            ax.plot(*zip(*pts), marker=".", ms=3, label=name, color=colour,
                    ls=styles[k % len(styles)], lw=1.2)
            lows.append(sorted(p[1] for p in pts)[len(pts) // 4])
    if lows:  # a CNN's single bad validations would squash the rest: the axis starts near the low quartiles
        ax.set_ylim(bottom=min(lows) - 1.0)
    ax.set_xlabel("CPU minutes in training steps (one thread)")
    ax.set_ylabel("validation PSNR (dB), 64 held-out training faces")
    ax.set_title("Denoising, sigma 0.20: equal budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def step_times(runs_dir: Path, names: List[str], repeats: int = 7) -> List[Dict[str, Any]]:
    """Median CPU seconds of one training step (forward + backward, batch and shape of the run), in the
    contiguous and the channels-last memory format (``invprox train --channels-last``); the flow prox also
    through the engine and with standard autograd. The modes of a run are timed interleaved."""
    import copy

    from invprox.train.solver_setup import load_solver

    torch.set_num_threads(1)
    rows = []
    for name in names:
        solver, cfg = load_solver(runs_dir / name / "solver.pt")
        solver.train()
        g = torch.Generator().manual_seed(0)
        x = torch.rand(cfg["batch"], cfg["channels"], cfg["size"], cfg["size"], generator=g)
        y = solver.physics.measure(x, cfg["sigma"], g)
        last = copy.deepcopy(solver).to(memory_format=torch.channels_last)
        cl = (last, x.contiguous(memory_format=torch.channels_last),
              y.contiguous(memory_format=torch.channels_last))
        modes = {"": (solver, x, y, None), "channels-last": (*cl, None)}
        if cfg["prox"] == "flow":
            modes = {"engine": (solver, x, y, True), "standard autograd": (solver, x, y, False),
                     "standard autograd, channels-last": (*cl, False)}

        def step(model, xb, yb, eff) -> None:
            if eff is not None:
                model.memory_efficient = eff
            model.zero_grad(set_to_none=True)
            ((model(yb) - xb) ** 2).mean().backward()

        times = interleaved_times({label: partial(step, *m) for label, m in modes.items()}, repeats - 1,
                                  warmup=1)
        rows += [{"run": name, "mode": label, "seconds": median(t["cpu"])} for label, t in times.items()]
    return rows


def write_md(runs: Dict[str, Dict[str, Any]], times: List[Dict[str, Any]], path: Path) -> None:
    lines = ["| run | prox | lr (net) | steps in budget | CPU s / step | after calibration (32 pairs) | "
             "best val PSNR | at CPU min |", "|---|---|---|---|---|---|---|---|"]
    for name, m in runs.items():
        cfg, val = m["config"], m["val"]
        cal = m.get("calibration") or {}
        if not val:  # stopped before its first validation (a non-finite loss)
            per_step = m["train_cpu_s"] / max(m["steps"], 1)
            lines.append(f"| {name} | {cfg['prox']} | {cfg['lr_net']:g} | {m['steps']} ({m['status']}) | "
                         f"{per_step:.3f} | {cal.get('psnr', float('nan')):.2f} dB | - | - |")
            continue
        best = max(val, key=lambda v: v["val_psnr"])
        cal_txt = f"{cal['psnr']:.2f} dB (alpha {cal.get('start_alpha')})" if cal else "-"
        src = m.get("init_from")
        grown = f" (K {cfg['K']}, after {src.get('steps')} at K {src['K']})" if src else ""
        steps = f"{m['steps']}{grown}"
        lines.append(
            f"| {name} | {cfg['prox']} | {cfg['lr_net']:g} | {steps} | "
            f"{m['train_cpu_s'] / max(m['steps'], 1):.3f} | "
            f"{cal_txt} | "
            f"{best['val_psnr']:.2f} dB "
            f"(step {best['step']}) | {offset_minutes(m) + best.get('train_cpu_s', 0) / 60:.1f} |")
    machines = [f"{name}: {m['machine'].get('cpu')} ({m['machine'].get('cpu_capability')}), "
                f"torch {m['machine'].get('torch')}" for name, m in runs.items() if m.get("machine")]
    if machines:  # recorded by invprox train since the metrics name the machine
        lines += ["", "Machine (CPU time per step depends on it):", ""] + [f"- {t}" for t in machines]
    if times:
        lines += ["", "Time of one training step (forward + backward, median of 6, one thread, "
                  "the run's batch and image size):", "", "| run | mode | CPU s / step |", "|---|---|---|"]
        lines += [f"| {t['run']} | {t['mode'] or '-'} | {t['seconds']:.3f} |" for t in times]
    path.write_text("\n".join(lines) + "\n")


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="run names under --runs-dir")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "table1"))
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"),
                   help="where a run no longer in --runs-dir is read from (the copies table1.sh keeps)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--step-time", action="store_true", help="also measure one training step per run")
    p.add_argument("--stem", default="table1", help="output names: <stem>_curves.png, <stem>_training.md")
    args = p.parse_args(argv)
    runs_dir, out = Path(args.runs_dir), Path(args.out)
    runs = load_runs(runs_dir, args.runs, Path(args.results_dir))
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(runs, out / f"{args.stem}_curves.png")
    done = [n for n in args.runs if (runs_dir / n / "solver.pt").is_file()]
    times = step_times(runs_dir, done) if args.step_time else []
    write_md(runs, times, out / f"{args.stem}_training.md")
    print((out / f"{args.stem}_training.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
