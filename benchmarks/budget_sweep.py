"""Test PSNR against the training budget: which solver leads depends on how long they train.

Reads the tested runs of ``benchmarks/table1.sh`` (``runs/table1/<run>/metrics.json`` for the budget, steps
and CPU time; ``runs/table1/eval_<run>/results.json`` for the mean test PSNR at each sigma; a run no longer
in ``runs/`` from the copies the script keeps in ``benchmarks/results``) and writes

* ``benchmarks/results/<stem>.md`` / ``.json``: per solver and budget, the steps done and the test PSNR at
  every sigma; per budget, each solver's lead over each one listed after it at every sigma;
* ``benchmarks/results/<stem>.png``: test PSNR against the budget (CPU minutes), one line per solver, one
  panel per sigma.

Usage::

    python benchmarks/budget_sweep.py \\
        --series "flow prox=flow_dn_k1_coup10_cos_drop2_cond_b5,flow_dn_k1_coup10_cos_drop2_cond_b10,..." \\
        --series "U-Net prox=unet_dn_k1_cos_m2_b5,unet_dn_k1_cos_m2_b10,unet_dn_k1_cos_m2" \\
        --stem table1_budget
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import markdown_table, run_record, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_series(text: str) -> Tuple[str, List[str]]:
    """``"LABEL=RUN,RUN,..."`` -> ``(label, [run, ...])``."""
    label, sep, runs = text.partition("=")
    names = [r.strip() for r in runs.split(",") if r.strip()]
    if not sep or not label.strip() or not names:
        raise ValueError(f"--series must be LABEL=RUN[,RUN...], got {text!r}")
    return label.strip(), names


def read_run(runs_dir: Path, name: str, results_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Budget, steps, CPU time and mean test PSNR per sigma of one trained and tested run (in ``runs_dir``,
    or its copies in ``results_dir``)."""
    mfile = run_record(runs_dir, name, "metrics", results_dir)
    rfile = run_record(runs_dir, name, "results", results_dir)
    m, r = json.loads(mfile.read_text()), json.loads(rfile.read_text())
    budget = (m.get("config") or {}).get("budget_minutes")
    if budget is None:
        raise ValueError(f"run {name} had no --budget-minutes: it has no place on a budget axis")
    if name not in r["mean"]:
        raise ValueError(f"{rfile} does not hold run {name} (methods: {', '.join(r['mean'])})")
    psnr = {float(s): v["psnr"] for s, v in r["mean"][name].items()}
    return {"run": name, "budget_min": float(budget), "steps": m.get("steps"),
            "train_cpu_s": m.get("train_cpu_s"), "n_images": r.get("n_images"), "psnr": psnr}


def by_budget(rows: List[Dict[str, Any]]) -> Dict[float, Dict[float, float]]:
    """Mean PSNR per sigma of the runs (seeds) at each budget: ``{budget: {sigma: psnr}}``."""
    out: Dict[float, Dict[float, List[float]]] = {}
    for r in rows:
        for s, v in r["psnr"].items():
            out.setdefault(r["budget_min"], {}).setdefault(s, []).append(v)
    return {b: {s: sum(v) / len(v) for s, v in d.items()} for b, d in sorted(out.items())}


def report(series: Dict[str, List[Dict[str, Any]]]) -> Tuple[str, List[float]]:
    """The markdown tables (every run, then each series' lead over each later one at every budget they
    share, on the means over the runs at a budget)."""
    sigmas = sorted({s for rows in series.values() for row in rows for s in row["psnr"]})
    head = ["solver", "run", "budget (CPU min)", "used (CPU min)", "steps", *[f"sigma {s:g}" for s in sigmas]]
    body = []
    for label, rows in series.items():
        for row in rows:
            used = "-" if row["train_cpu_s"] is None else f"{row['train_cpu_s'] / 60:.1f}"
            body.append([label, f"`{row['run']}`", f"{row['budget_min']:g}", used, f"{row['steps']:,}",
                         *[f"{row['psnr'][s]:.2f}" if s in row["psnr"] else "-" for s in sigmas]])
    md = markdown_table(head, body, align="ll" + "r" * (len(head) - 2))
    md += ("\n'used': the CPU minutes of training steps the run took; below its budget where it stopped "
           "first (its epoch limit).\n")
    labels = list(series)
    if len(labels) > 1:
        means = {label: by_budget(series[label]) for label in labels}
        lead = []
        for i, one in enumerate(labels):
            for other in labels[i + 1:]:
                for b, theirs in means[other].items():
                    mine = means[one].get(b)
                    if mine is None:
                        continue
                    lead.append([f"{one} - {other}", f"{b:g}",
                                 *[f"{mine[s] - theirs[s]:+.2f}" if s in mine and s in theirs else "-"
                                   for s in sigmas]])
        if lead:
            md += "\nLead (dB) at the same budget (means over the runs at a budget):\n\n" + markdown_table(
                ["", "budget (CPU min)", *[f"sigma {s:g}" for s in sigmas]], lead)
    return md, sigmas


def plot(series: Dict[str, List[Dict[str, Any]]], sigmas: List[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sigmas), figsize=(3.2 * len(sigmas), 3.2), squeeze=False)
    means = {label: by_budget(rows) for label, rows in series.items()}
    budgets = sorted({b for d in means.values() for b in d})
    for ax, s in zip(axes[0], sigmas):
        for label, per_budget in means.items():
            pts = [(b, d[s]) for b, d in per_budget.items() if s in d]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
        ax.minorticks_off()
        ax.set_title(f"sigma {s:g}")
        ax.set_xlabel("training budget (CPU minutes)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test PSNR (dB)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", action="append", required=True, metavar="LABEL=RUN,RUN...",
                   help="one solver: its label and its runs (one per budget)")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "table1"))
    p.add_argument("--stem", default="table1_budget")
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"),
                   help="where a run no longer in --runs-dir is read from (the copies table1.sh keeps)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    try:
        parsed = [parse_series(s) for s in args.series]
        series = {label: sorted((read_run(Path(args.runs_dir), n, Path(args.results_dir)) for n in names),
                                key=lambda r: r["budget_min"]) for label, names in parsed}
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    md, sigmas = report(series)
    n = sorted({r["n_images"] for rows in series.values() for r in rows})
    title = (f"# Test PSNR against the training budget\n\nMean PSNR (dB) on {', '.join(map(str, n))} test "
             f"faces; budget: CPU minutes in training steps, one thread (`benchmarks/budget_sweep.py`).\n\n")
    paths = write_results(args.out, args.stem, {"series": series}, title + md)
    if not args.no_plot:
        png = Path(args.out) / f"{args.stem}.png"
        plot(series, sigmas, png)
        paths.append(str(png))
    print(title + md)
    print("wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
