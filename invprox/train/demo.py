"""``invprox demo``: the main job, end to end, on the embedded default data.

1. pre-trains a small Glow by maximum likelihood (through the engine) on patches of the real photographs
   that ship inside scikit-image;
2. trains the unrolled flow-prox solver (K folds) and a U-Net prox baseline for Gaussian denoising;
3. evaluates both against the noisy input on held-out images, and prints a PSNR/SSIM table (BM3D, at
   about 4 s per image on a CPU, is left to ``invprox eval --classical``);
4. measures the memory and time of one training step with standard autograd and with invprox, for the
   trained solver and for K = 1 ... 16, and plots memory against K;
5. writes an image grid (noisy / restored / clean) and the memory plot, and prints where everything went.

It takes about 10 minutes on a 2-core CPU (``--quick``: about 1 minute, for a smoke test).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

__all__ = ["run_demo", "add_parser"]

#: Settings of the full demo and of ``--quick``.
PRESETS: Dict[str, Dict[str, Any]] = {
    "full": dict(size=32, channels=3, levels=2, steps=4, hidden=48, glow_minutes=3.0, K=4,
                 solver_steps=100, baseline_steps=100, batch=8, n_val=24, mem_ks=(1, 4, 16)),
    "quick": dict(size=16, channels=3, levels=2, steps=2, hidden=16, glow_minutes=0.2, K=2,
                  solver_steps=4, baseline_steps=4, batch=4, n_val=4, mem_ks=(1, 2, 4)),
}


def _training_step_cost(solver, y: torch.Tensor, x: torch.Tensor, efficient: bool,
                        backward: bool = True) -> Dict[str, float]:
    """Saved-for-backward bytes (activations) and wall time of one training step (forward + backward).

    The bytes are known once the forward has run; ``backward=False`` skips the backward (and the time).
    """
    from ..core.memory import saved_tensor_bytes

    solver.memory_efficient = efficient
    solver.zero_grad()
    t0 = time.perf_counter()
    loss, rec = saved_tensor_bytes(lambda: (solver(y) - x).square().mean(), exclude=solver.parameters())
    if backward:
        loss.backward()
    seconds = time.perf_counter() - t0
    solver.memory_efficient = True
    return {"activation_bytes": rec.bytes, "seconds": seconds if backward else float("nan")}


def memory_report(solver_path: Path, ks, sigma: float, batch: int, seed: int) -> Dict[str, Any]:
    """Memory of one training step, standard autograd vs invprox: the trained solver, and a K sweep."""
    from ..core.memory import tensor_bytes
    from ..data import make_dataset
    from ..physics import Denoising
    from ..solvers import FlowProxSolver
    from .loop_utils import dataset_tensor
    from .solver_setup import load_solver

    solver, _ = load_solver(solver_path)
    solver.train()  # a training step
    size = solver.image_shape[-1]
    x = dataset_tensor(make_dataset("embedded", size, solver.image_shape[0], "val"), limit=batch)
    g = torch.Generator().manual_seed(seed)
    y = x + sigma * torch.randn(x.shape, generator=g)
    out: Dict[str, Any] = {"batch": batch, "image_shape": list(solver.image_shape)}
    for name, eff in (("standard", False), ("invprox", True)):
        out[f"trained_K{solver.K}_{name}"] = _training_step_cost(solver, y, x, eff)
    flow = solver.flows[0]
    sweep: List[Dict[str, Any]] = []
    for K in ks:
        s = FlowProxSolver(flow, Denoising(), K=K)
        row: Dict[str, Any] = {"K": K, "param_bytes": tensor_bytes(s.parameters())}
        for name, eff in (("standard", False), ("invprox", True)):
            row[name] = _training_step_cost(s, y, x, eff, backward=False)["activation_bytes"]
        sweep.append(row)
    out["sweep"] = sweep
    return out


def plot_memory(report: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ks = [r["K"] for r in report["sweep"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, style in (("standard", "o-"), ("invprox", "s-")):
        ax.plot(ks, [r[name] / 2**20 for r in report["sweep"]], style, label=f"{name}: activations")
    params = [r["param_bytes"] / 2**20 for r in report["sweep"]]
    ax.plot(ks, params, "k:", label="parameters (untied folds)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("folds K")
    ax.set_ylabel("MiB")
    ax.set_title("Memory of one training step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fresh_dir(path: Path) -> Path:
    """``path`` if missing or empty, else the first free ``path-2``, ``path-3``, ... (never overwrites)."""
    candidate, n = path, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def run_demo(out: str = "runs/demo", quick: bool = False, seed: int = 0, sigma: float = 0.2,
             progress: bool = True, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the main job; returns (and writes to ``out/summary.json``) its results."""
    from .evaluate import evaluate
    from .pretrain import pretrain
    from .solver_train import train_solver

    p = PRESETS["quick" if quick else "full"]
    root = _fresh_dir(Path(out))
    log(f"writing to {root}")
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    common = dict(size=p["size"], channels=p["channels"], seed=seed, progress=progress, log=log)

    log(f"[1/4] pre-training a Glow on embedded scikit-image photographs ({p['glow_minutes']} min)")
    pretrain("embedded", str(root / "glow"), levels=p["levels"], steps=p["steps"], hidden=p["hidden"],
             n_bits=5, scale_min=0.5, batch=32, epochs=10_000, lr=1e-3, warmup=50,
             max_minutes=p["glow_minutes"],
             **common)
    flow_path = root / "glow" / "flow.pt"

    log(f"[2/4] training the unrolled flow-prox solver (K={p['K']}) and a U-Net prox baseline")
    runs = {}
    for prox, steps, lr_net in (("flow", p["solver_steps"], 1e-4), ("unet", p["baseline_steps"], 1e-3)):
        d = root / prox
        train_solver("embedded", str(d), task="denoising", prox=prox, K=p["K"], sigma=sigma,
                     flow=str(flow_path) if prox == "flow" else None, lr_net=lr_net, lr_step=1e-2,
                     batch=p["batch"], epochs=10_000, max_steps=steps, val_every=max(steps // 3, 1),
                     n_val=p["n_val"], **common)
        runs[prox] = d / "solver.pt"

    log("[3/4] evaluating on held-out images")
    summary = evaluate([runs["flow"], runs["unet"]], root / "eval", names=["flow prox", "U-Net prox"],
                       sigmas=(0.1, sigma, 0.25), data="embedded", split="val", limit=p["n_val"],
                       seed=seed, grid_n=6, grid_sigma=sigma, progress=progress, log=log)

    log("[4/4] memory and time of one training step: standard autograd vs invprox")
    mem = memory_report(runs["flow"], p["mem_ks"], sigma, p["batch"], seed)
    plot_memory(mem, root / "memory_vs_K.png")
    result = {"eval": summary, "memory": mem, "minutes": (time.perf_counter() - t_start) / 60,
              "outputs": {"table": str(root / "eval" / "results.md"), "grid": str(root / "eval" / "grid.png"),
                          "memory_plot": str(root / "memory_vs_K.png"), "flow": str(flow_path),
                          "solvers": {k: str(v) for k, v in runs.items()}}}
    (root / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    _print_summary(result, log)
    return result


def _print_summary(result: Dict[str, Any], log: Callable[[str], None]) -> None:
    mem = result["memory"]
    log("")
    log(Path(result["outputs"]["table"]).read_text())
    k = next(key for key in mem if key.startswith("trained_K") and key.endswith("_standard"))
    std, eff = mem[k], mem[k.replace("_standard", "_invprox")]
    log(f"One training step of the trained solver ({k[8:].split('_')[0]}, batch {mem['batch']}):")
    for name, m in (("standard autograd", std), ("invprox engine", eff)):
        log(f"  {name:18s} {m['activation_bytes'] / 2**20:8.2f} MiB activations, {m['seconds']:.2f} s")
    log("  K sweep (MiB of activations, standard / invprox): " + ", ".join(
        f"K={r['K']}: {r['standard'] / 2**20:.1f} / {r['invprox'] / 2**20:.1f}" for r in mem["sweep"]))
    log(f"\nDone in {result['minutes']:.1f} min. Outputs:")
    for name, path in result["outputs"].items():
        log(f"  {name}: {path}")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo", help="run the main job on the embedded default data (about 10 minutes on 2 CPU cores)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="tiny settings, about a minute (a smoke test)")
    p.add_argument("--sigma", type=float, default=0.2, help="training noise level, images in [0, 1]")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    run_demo(args.out, quick=args.quick, seed=args.seed, sigma=args.sigma, progress=not args.no_progress)
    return 0
