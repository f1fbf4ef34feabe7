"""PNG plots of the solver-K benchmarks (matplotlib, Agg backend).

* :func:`plot_solver_k`: from ``solver_k_<device>.json`` (``benchmarks/solver_k.py``): ``<stem>_memory.png``
  (activation bytes and peak memory per step vs K, with parameters + gradients + Adam state for reference)
  and ``<stem>_time.png`` (time per training step vs K, and its ratio to standard autograd).
* :func:`plot_psnr`: from ``solver_k_psnr.json`` (``benchmarks/solver_k_psnr.py``): validation PSNR vs K.

Regenerate from the JSON files::

    python benchmarks/plots.py benchmarks/results/solver_k_cpu.json benchmarks/results/solver_k_psnr.json
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_STYLE = {
    "standard": ("tab:red", "o", "-"),
    "checkpoint": ("tab:orange", "s", "-"),
    "memcnn": ("tab:purple", "^", "-"),
    "invprox": ("tab:blue", "D", "-"),
    "invprox_keepfold": ("tab:cyan", "v", "--"),
    "invprox_norng": ("tab:green", "x", ":"),
}


def _series(rows: List[Dict[str, Any]], method: str, key: str):
    pts = [(r["K"], r[key]) for r in rows if r["method"] == method and r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_solver_k(payload: Dict[str, Any], stem: str) -> List[str]:
    """Write ``<stem>_memory.png`` and ``<stem>_time.png``; returns their paths."""
    sw = payload["sweep"]
    rows, methods = sw["rows"], sw["methods"]
    cfg = payload["config"]
    mib = 2.0**20
    peak_name = "CUDA peak" if str(cfg["device"]).startswith("cuda") else "peak RSS (fresh child)"
    title = (f"{cfg['batch']}x{cfg['channels']}x{cfg['size']}x{cfg['size']}, Glow L{cfg['levels']} "
             f"S{cfg['steps']} H{cfg['hidden']}, untied folds ({cfg['device']})")
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for m in methods:
        c, mk, ls = _STYLE.get(m, ("gray", ".", "-"))
        k, v = _series(rows, m, "act")
        axes[0].plot(k, [x / mib for x in v], color=c, marker=mk, ls=ls, label=m)
        k, v = _series(rows, m, "peak_tensor")
        if k:
            axes[1].plot(k, [x / mib for x in v], color=c, marker=mk, ls=ls, label=m)
        k, v = _series(rows, m, "peak")
        axes[1].plot(k, [x / mib for x in v], color=c, marker=mk, ls=":" if any(
            r.get("peak_tensor") for r in rows) else ls, lw=1, alpha=0.7,
            label=None if any(r.get("peak_tensor") for r in rows) else m)
    k, v = _series(rows, methods[0], "state")
    for ax in axes:
        if k:
            ax.plot(k, [x / mib for x in v], color="k", ls="--", lw=1,
                    label="params + grads + Adam (untied)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("folds K")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("MiB")
    axes[0].set_title("activations: saved for backward + held")
    has_tensor = any(r.get("peak_tensor") for r in rows)
    axes[1].set_title((f"tensor peak (solid), {peak_name} (dotted)" if has_tensor else peak_name)
                      + "\nof one step, above params/grads/Adam", fontsize=9)
    axes[1].legend(fontsize=8)
    fig.suptitle("Memory of one training step vs K: " + title, fontsize=10)
    fig.tight_layout()
    p = stem + "_memory.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    clock = "CPU" if cfg["device"] == "cpu" else "wall"
    for m in methods:
        c, mk, ls = _STYLE.get(m, ("gray", ".", "-"))
        k, v = _series(rows, m, "time")
        axes[0].plot(k, v, color=c, marker=mk, ls=ls, label=m)
        k, v = _series(rows, m, "time_ratio")
        axes[1].plot(k, v, color=c, marker=mk, ls=ls, label=m)
    axes[1].axhline(1.4, color="k", ls="--", lw=1, label="1.4x target")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("folds K")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].set_ylabel(f"{clock} seconds per training step (median)")
    axes[1].set_ylabel("x standard autograd (same run)")
    axes[1].legend(fontsize=8)
    fig.suptitle("Time of one training step vs K: " + title, fontsize=10)
    fig.tight_layout()
    p = stem + "_time.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def plot_psnr(payload: Dict[str, Any], path: str) -> str:
    """Validation PSNR vs K (trained, untrained, noisy input); returns ``path``."""
    rows = payload["rows"]
    ks = [r["K"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot(ks, [r["psnr"] for r in rows], "o-", color="tab:blue",
            label=f"trained {payload['config']['train_steps']} steps")
    if all("psnr_init" in r for r in rows):
        ax.plot(ks, [r["psnr_init"] for r in rows], "s--", color="tab:gray", label="before training")
    ax.axhline(payload["psnr_noisy"], color="tab:red", ls=":", label="noisy input")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("folds K")
    ax.set_ylabel("validation PSNR (dB)")
    c = payload["config"]
    ax.set_title(f"Flow-prox denoising sigma {c['sigma']}, {c['data']} {c['size']}x{c['size']}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    for path in (argv if argv is not None else sys.argv[1:]):
        with open(path) as f:
            payload = json.load(f)
        stem = os.path.splitext(path)[0]
        if payload.get("benchmark") == "solver_k" and "sweep" in payload:
            print("\n".join(plot_solver_k(payload, stem)))
        elif payload.get("benchmark") == "solver_k_psnr":
            print(plot_psnr(payload, stem + ".png"))
        else:
            print(f"{path}: nothing to plot", file=sys.stderr)


if __name__ == "__main__":
    main()
