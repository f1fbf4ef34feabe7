"""Is one solver's lead over another larger than the test images and the training seed let it be?

Reads the per-image results of ``invprox eval`` (``per_image.csv`` in each evaluation folder) for two
groups of runs, A and B (e.g. the seeds of the flow prox and of U-Net prox), and reports per noise level:

A folder's first method (``results.json``'s ``methods``: the evaluated model) is read; ``FOLDER@METHOD``
reads another (e.g. ``@noisy input``).

* the mean PSNR (and SSIM) of each group, each image first averaged over the group's runs;
* the paired difference A - B, its 95% bootstrap interval over the test images (``--resamples`` draws of
  the images with replacement) and the share of images on which A is ahead;
* the difference of every pair of runs (one of A, one of B), to put the seed's spread beside the images'.

All evaluations must be of the same images with the same noise draw (``invprox eval --seed``), so the
difference is paired image by image. The bootstrap treats images as independent; CelebA's test faces come
from 20 people, several faces each, so the interval is, if anything, too narrow.

    python benchmarks/paired_diff.py --a runs/table1/eval_flow_untie runs/table1/eval_flow_untie_seed1 \\
        --b runs/table1/eval_unet runs/table1/eval_unet_seed1 --names "flow prox" "U-Net prox" \\
        --out benchmarks/results --stem table1_paired
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import command_line, markdown_table, write_results  # noqa: E402

METRICS = ("psnr", "ssim")


def read_eval(spec: str) -> Tuple[Dict[str, Any], Dict[Tuple[float, str], np.ndarray]]:
    """An evaluation folder's settings (``results.json``) and ``{(sigma, metric): per-image values}`` of
    one method: ``FOLDER`` (its first method) or ``FOLDER@METHOD``."""
    folder_s, _, method = spec.partition("@")
    folder = Path(folder_s)
    res_path, csv_path = folder / "results.json", folder / "per_image.csv"
    for p in (res_path, csv_path):
        if not p.is_file():
            raise SystemExit(f"{folder}: no {p.name} (an `invprox eval` output folder is expected)")
    info = json.loads(res_path.read_text())
    methods = list(info.get("methods") or [])
    method = method or (methods[0] if methods else "")
    if method not in methods:
        raise SystemExit(f"{folder}: no method {method!r}; it has {methods}")
    info["method"] = method
    rows: Dict[float, Dict[int, Dict[str, float]]] = {}
    with open(csv_path, newline="") as f:
        for r in csv.DictReader(f):
            if r["method"] == method:
                rows.setdefault(float(r["sigma"]), {})[int(r["index"])] = {m: float(r[m]) for m in METRICS}
    values = {}
    for sigma, by_index in rows.items():
        idx = sorted(by_index)
        if idx != list(range(len(idx))):
            raise SystemExit(f"{csv_path}: images at sigma {sigma:g} are not numbered 0..{len(idx) - 1}")
        for m in METRICS:
            values[(sigma, m)] = np.array([by_index[i][m] for i in idx])
    return info, values


def check_paired(folders: Sequence[str], infos: Sequence[Dict[str, Any]]) -> None:
    """All evaluations must share task, data, split, image count and noise seed."""
    keys = ("task", "data", "split", "n_images", "seed")
    ref = {k: infos[0].get(k) for k in keys}
    for folder, info in zip(folders[1:], infos[1:]):
        got = {k: info.get(k) for k in keys}
        if got != ref:
            diff = ", ".join(f"{k} {got[k]!r} (first: {ref[k]!r})" for k in keys if got[k] != ref[k])
            raise SystemExit(f"{folder} is not paired with {folders[0]}: {diff}")


def bootstrap_interval(d: np.ndarray, resamples: int, rng: np.random.Generator, level: float = 0.95
                       ) -> Tuple[float, float]:
    """Percentile interval of the mean of ``d`` over ``resamples`` resamplings with replacement."""
    n = len(d)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # in blocks: 1000 x n indices at a time
        k = min(1000, resamples - start)
        means[start:start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def compare(a: Sequence[str], b: Sequence[str], resamples: int, seed: int) -> Dict[str, Any]:
    folders = [*a, *b]
    loaded = [read_eval(f) for f in folders]
    check_paired(folders, [i for i, _ in loaded])
    va, vb = [v for _, v in loaded[:len(a)]], [v for _, v in loaded[len(a):]]
    sigmas = sorted({s for s, _ in va[0]})
    for f, v in zip(folders, [*va, *vb]):
        if sorted({s for s, _ in v}) != sigmas:
            raise SystemExit(f"{f}: noise levels {sorted({s for s, _ in v})}, the first has {sigmas}")
    rng = np.random.default_rng(seed)
    rows = []
    for sigma in sigmas:
        row: Dict[str, Any] = {"sigma": sigma}
        for m in METRICS:
            ma = np.mean([v[(sigma, m)] for v in va], axis=0)
            mb = np.mean([v[(sigma, m)] for v in vb], axis=0)
            d = ma - mb
            row[m] = {"a": float(ma.mean()), "b": float(mb.mean()), "diff": float(d.mean()),
                      "ci95": bootstrap_interval(d, resamples, rng), "a_ahead": float((d > 0).mean()),
                      "run_pairs": [float((x[(sigma, m)] - y[(sigma, m)]).mean()) for x, y in
                                    itertools.product(va, vb)]}
        rows.append(row)
    return {"a": list(a), "b": list(b), "resamples": resamples, "seed": seed,
            "n_images": int(loaded[0][0]["n_images"]), "rows": rows}


def report(res: Dict[str, Any], names: Sequence[str], command: str) -> str:
    na, nb = names
    lines = [f"# {na} against {nb}: paired differences on {res['n_images']} test images", "",
             f"Command: `{command}`", "",
             f"A = {na}: {', '.join(res['a'])}", "", f"B = {nb}: {', '.join(res['b'])}", "",
             f"Each image's PSNR / SSIM averaged over a group's runs; A - B paired image by image; 95% "
             f"interval of the mean difference from {res['resamples']} bootstrap resamplings of the images "
             f"(images treated as independent); 'run pairs': the mean difference of each run of A against"
             f" each run of B (the seed's spread).", ""]
    table = []
    for r in res["rows"]:
        p, s = r["psnr"], r["ssim"]
        table.append([f"{r['sigma']:g}", f"{p['a']:.2f}", f"{p['b']:.2f}", f"{p['diff']:+.3f}",
                      f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]", f"{p['a_ahead']:.0%}",
                      " / ".join(f"{x:+.2f}" for x in p["run_pairs"]), f"{s['diff']:+.4f}",
                      f"[{s['ci95'][0]:+.4f}, {s['ci95'][1]:+.4f}]"])
    lines.append(markdown_table(
        ["sigma", f"{na} PSNR", f"{nb} PSNR", "A - B dB", "95% interval", "images A ahead", "run pairs dB",
         "A - B SSIM", "95% interval"], table))
    return "\n".join(lines) + "\n"


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", nargs="+", required=True, metavar="FOLDER[@METHOD]",
                   help="evaluation folders of group A")
    p.add_argument("--b", nargs="+", required=True, metavar="FOLDER[@METHOD]",
                   help="evaluation folders of group B")
    p.add_argument("--names", nargs=2, default=["A", "B"], help="the two groups' names in the report")
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--out", default=None, help="write <stem>.md and <stem>.json there")
    p.add_argument("--stem", default="paired_diff")
    args = p.parse_args(argv)
    if args.resamples < 100:
        p.error(f"--resamples must be >= 100, got {args.resamples}")
    res = compare(args.a, args.b, args.resamples, args.seed)
    command = command_line(__file__, argv)
    md = report(res, args.names, command)
    if args.out:
        write_results(args.out, args.stem, {**res, "names": args.names, "command": command}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
