"""Evaluation of trained solvers and references over noise levels: the ``invprox eval`` subcommand.

Python::

    from invprox.train.evaluate import evaluate
    summary = evaluate(["runs/flow/solver.pt", "runs/unet/solver.pt"], "runs/eval", limit=100)

Command line::

    invprox eval --model runs/flow/solver.pt --model runs/unet/solver.pt --classical \\
        --latent-map --flow runs/glow/flow.pt --data celeba64 --split val --limit 100 --out runs/eval

The task, its options and the image size come from the first model (all models must agree) or, without
models, from ``--task``/``--size``/``--channels``. The measurement of image ``i`` at noise ``sigma`` is a
pure function of ``(seed, i, sigma)`` (inpainting masks of ``(seed, i)``), so every method sees the same
inputs and runs are reproducible. Outputs are clamped to ``[0, 1]`` before PSNR and SSIM. Written to
``out``: ``per_image.csv`` (method, sigma, index, psnr, ssim), ``results.md`` (method x sigma average
PSNR / SSIM), ``results.json`` and ``grid.png`` (rows: input, each method, truth). SSIM uses the 11x11
Gaussian window of Wang et al.; images smaller than 11 pixels use the largest window that fits.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn import functional as F

from ..metrics import psnr, ssim
from ..physics import canonical_task
from ..solvers.adapt import check_adaptable, noise_adapted
from ..solvers.ensemble import mirror_averaged
from .loop_utils import dataset_tensor, resolve_device, write_json
from .solver_setup import fixed_measurements, load_solver, physics_options

__all__ = ["evaluate", "add_parser"]

Method = Callable[[Tensor, Any, float], Tensor]


#: the config entries that pick a training run's images (:func:`invprox.train.pretrain.solver_images`)
_IMAGE_KEYS = ("data", "size", "channels", "n_train", "val_data", "n_val", "seed")


@functools.lru_cache(maxsize=4)
def _validation_images(key: Tuple[Tuple[str, Any], ...], data_root: Optional[str]) -> Tensor:
    """A run's validation images, loaded once per process (``key``: its :data:`_IMAGE_KEYS`; ``data_root``:
    ``$INVPROX_DATA``, where a named data set is looked up): finding a held-out slice loads the whole
    training set, and a caller that evaluates one model many times (``benchmarks/adapt_choice.py``) would
    load it on every call."""
    from .pretrain import solver_images

    return solver_images(dict(key))[1]


def _ssim(out: Tensor, ref: Tensor) -> Tensor:
    r_max = (min(out.shape[-2:]) - 1) // 2
    if r_max >= 5:
        return ssim(out, ref)
    if r_max < 1:
        return torch.full((out.shape[0],), float("nan"))
    return ssim(out, ref, sigma=r_max / 3.5)  # radius int(3.5 * sigma + 0.5) = r_max: the window fits


def _display(y: Tensor, op: Any, like: Tensor) -> Tensor:
    """The measurement as an image of ``like``'s shape (for the grid)."""
    if y.shape == like.shape:
        return y.clamp(0, 1)
    if y.dim() == 4 and y.shape[1] == like.shape[1]:
        return F.interpolate(y, size=like.shape[-2:], mode="nearest").clamp(0, 1)
    x = op.A_adjoint(y)
    lo = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = x.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return (x - lo) / (hi - lo).clamp(min=1e-12)


def _model_method(solver, path, cfg: Dict[str, Any], adapt_start: float, adapt_lam: float) -> Method:
    """``run(y, op, sigma)`` of a loaded solver; with adaptation, its start (and a flow prox's lambda)
    scaled for each ``sigma`` (lambda adaptation leaves the CNN solvers as they are)."""
    adapt_lam = adapt_lam if cfg["prox"] == "flow" else 0.0
    if adapt_start or adapt_lam:
        if not cfg["sigma"] > 0:
            raise ValueError(f"{path}: noise adaptation needs a model trained at a positive sigma")
        check_adaptable(solver, adapt_start, adapt_lam)

    def run(y: Tensor, op: Any, sigma: float) -> Tensor:
        if not (adapt_start or adapt_lam):
            with torch.no_grad():
                return solver(y, op)
        if not sigma > 0:
            raise ValueError(f"noise adaptation needs a positive test noise level, got {sigma}")
        with torch.no_grad(), noise_adapted(solver, sigma / cfg["sigma"], adapt_start, adapt_lam):
            return solver(y, op)

    return run


def _references(task: str, latent_map: bool, flow: Optional[str], lm: Dict[str, Any], classical: bool,
                dev) -> List[Tuple[str, Method]]:
    from ..solvers.classical import noisy_input

    def back_projection(y: Tensor, op: Any, sigma: float) -> Tensor:
        return noisy_input(y, op)

    label = "noisy input" if task == "denoising" else "back-projection A^T y"
    refs: List[Tuple[str, Method]] = [(label, back_projection)]
    if latent_map:
        if not flow:
            raise ValueError("--latent-map needs the pre-trained Glow: pass --flow PATH")
        from ..flows.glow import Glow
        from ..solvers.latent_map import LatentMAP

        glow = Glow.load(flow).to(dev)
        kw = {k: v for k, v in lm.items() if v is not None}

        def latent(y: Tensor, op: Any, sigma: float) -> Tensor:
            gamma = kw.get("gamma", sigma**2)  # the Gaussian MAP weight unless --lm-gamma
            # each image stops by the discrepancy principle at this noise level (no overfitting)
            return LatentMAP(glow, op, **{**kw, "gamma": gamma, "sigma": sigma or None})(y).detach()

        refs.append(("latent MAP", latent))
    if classical:
        from ..solvers.classical import classical_reference

        used: List[str] = []

        def run(y: Tensor, op: Any, sigma: float) -> Tensor:
            x, name = classical_reference(y, op, task, sigma)
            if name not in used:
                used.append(name)
            return x

        run.used = used  # type: ignore[attr-defined]
        refs.append(("classical", run))
    return refs


def _fmt(v: float, digits: int) -> str:
    return "inf" if v == math.inf else ("n/a" if math.isnan(v) else f"{v:.{digits}f}")


def _cell(m: Dict[str, float]) -> str:
    """``PSNR / SSIM``, with ``[k/n finite]`` when some outputs were NaN (the means are over the rest)."""
    cell = f"{_fmt(m['psnr'], 2)} / {_fmt(m['ssim'], 4)}"
    return cell if m["n_finite"] == m["n"] else f"{cell} [{m['n_finite']}/{m['n']} finite]"


def evaluate(
    models: Sequence[Union[str, Path]] = (),
    out: Union[str, Path] = "runs/eval",
    *,
    names: Optional[Sequence[str]] = None,
    sigmas: Sequence[float] = (0.10, 0.15, 0.20, 0.25),
    data: Optional[str] = None,
    split: str = "val",
    limit: Optional[int] = None,
    task: Optional[str] = None,
    size: Optional[int] = None,
    channels: Optional[int] = None,
    latent_map: bool = False,
    flow: Optional[str] = None,
    lm_gamma: Optional[float] = None,
    lm_steps: Optional[int] = None,
    lm_lr: Optional[float] = None,
    classical: bool = False,
    adapt_start: float = 0.0,
    adapt_lam: float = 0.0,
    mirror: bool = False,
    seed: int = 0,
    batch: int = 16,
    device: str = "cpu",
    grid_n: int = 8,
    grid_sigma: Optional[float] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Evaluate solvers and references on a grid of noise levels; see the module docstring.

    Args:
        models: ``solver.pt`` files of ``invprox train``. names: one label per model (default: prox type).
        out: output folder. sigmas: noise levels.
        data, split, limit: data spec (default: the first model's), split, and at most this many images;
            split ``"validation"``: the images the first model was validated on in its training run
            (:func:`invprox.train.pretrain.solver_images`).
        task, size, channels: the problem when no model is given (else they must match the models').
        latent_map, flow, lm_gamma, lm_steps, lm_lr: add latent-space MAP with the Glow ``flow``
            (``lm_gamma`` default: ``sigma**2`` at each noise level, the Gaussian MAP weight).
        classical: add the classical reference of the task (e.g. BM3D for denoising).
        adapt_start, adapt_lam: at each noise level ``sigma``, scale every model's smooth-start weight
            (and the flow prox's latent shrinkage; CNN solvers have none) by
            ``(sigma / sigma_train) ** power``
            (:func:`invprox.solvers.adapt.noise_adapted`; 0: the trained values at every level).
        mirror: each model's output is the average of its outputs on the measurement and on its mirror
            image (mirrored back; :func:`invprox.solvers.ensemble.mirror_averaged`): a self-ensemble at
            twice the cost, for operators that commute with a left-right mirror (else ``ValueError``); the
            references are run as they are.
        seed: seed of measurements. batch: images per solver call. device: "cpu", "cuda", "auto".
        grid_n, grid_sigma: images per grid row, and the noise level shown (the one of ``sigmas``
            nearest ``grid_sigma``, by default nearest the training noise, or the middle one).

    Returns:
        ``{"mean": {method: {sigma: {"psnr", "ssim"}}}, "methods", "sigmas", "n_images", "task", ...}``.

    Raises:
        ValueError, FileNotFoundError: bad options, models that disagree, missing data or files.
    """
    if not models and not latent_map and not classical:
        raise ValueError("nothing to evaluate: pass --model PATH, --latent-map or --classical")
    sigmas = [float(s) for s in sigmas]
    if not sigmas or any(not s >= 0 for s in sigmas):
        raise ValueError(f"sigmas must be non-negative numbers, got {sigmas!r}")
    dev = resolve_device(device)
    names = list(names or [])
    if len(names) > len(models):
        raise ValueError(f"{len(names)} names for {len(models)} models")
    methods: List[Tuple[str, Method]] = []
    ref_cfg: Optional[Dict[str, Any]] = None
    for i, path in enumerate(models):
        solver, cfg = load_solver(path, dev)
        if ref_cfg is None:
            ref_cfg = cfg
        for key in ("task", "physics_options", "size", "channels"):
            if cfg[key] != ref_cfg[key]:
                raise ValueError(f"models disagree on {key}: {models[0]} has {ref_cfg[key]!r}, "
                                 f"{path} has {cfg[key]!r}")
        name = names[i] if i < len(names) else cfg["prox"]
        taken = [m[0] for m in methods]
        name = name if name not in taken else f"{name}#{sum(t.split('#')[0] == name for t in taken) + 1}"
        run = _model_method(solver, path, cfg, adapt_start, adapt_lam)
        methods.append((name, mirror_averaged(run) if mirror else run))
    if ref_cfg is not None:
        if task is not None and canonical_task(task) != ref_cfg["task"]:
            raise ValueError(f"--task {task} differs from the models' task {ref_cfg['task']}")
        task, popts = ref_cfg["task"], ref_cfg["physics_options"]
        size, channels = ref_cfg["size"], ref_cfg["channels"]
        data = data or ref_cfg["data"]
    else:
        task = canonical_task(task or "denoising")
        popts = physics_options(task, seed=seed)
        size, channels, data = size or 64, channels or 3, data or "embedded"
    methods += _references(task, latent_map, flow, {"gamma": lm_gamma, "steps": lm_steps, "lr": lm_lr},
                           classical, dev)
    if split == "validation":  # the first model's own validation images (e.g. its held-out training slice)
        if ref_cfg is None:
            raise ValueError("split 'validation' is the validation images of the first model's training "
                             "run: pass --model")
        run = {**ref_cfg, "data": data}
        x_all = _validation_images(tuple((k, run[k]) for k in _IMAGE_KEYS), os.environ.get("INVPROX_DATA"))
        x_all = x_all[:limit]
    else:
        from ..data import make_dataset

        kw: Dict[str, Any] = {"seed": seed, "n": limit} if data == "embedded" else {}
        x_all = dataset_tensor(make_dataset(data, size=size, channels=channels, split=split, **kw), limit)
    n = len(x_all)
    train_sigma = ref_cfg["sigma"] if ref_cfg else sigmas[len(sigmas) // 2]
    gs = min(sigmas, key=lambda s: abs(s - (train_sigma if grid_sigma is None else grid_sigma)))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    # None: tqdm turns itself off where the output is not a terminal (a log file)
    bar = tqdm(total=len(sigmas) * len(methods), disable=None if progress else True, unit="run", desc="eval")
    rows: List[Dict[str, Any]] = []
    grid: Dict[str, Tensor] = {}
    for sigma in sigmas:
        groups = fixed_measurements(x_all, range(n), task, popts, sigma, seed, "eval", batch)
        if sigma == gs:
            shown = [g for g in groups if g[0] < grid_n]
            grid["input"] = torch.cat([_display(y, op, x_all[a:b]) for a, b, y, op in shown])[:grid_n]
        for name, fn in methods:
            outs = []
            for a, b, y, op in groups:
                x = x_all[a:b].to(dev)
                est = fn(y.to(dev), op, sigma).detach().clamp(0, 1)
                ps, ss = psnr(est, x).cpu(), _ssim(est, x).cpu()
                rows += [{"method": name, "sigma": sigma, "index": a + j, "psnr": float(ps[j]),
                          "ssim": float(ss[j])} for j in range(b - a)]
                if sigma == gs and a < grid_n:
                    outs.append(est.cpu())
            if outs:
                grid[name] = torch.cat(outs)[:grid_n]
            bar.update(1)
    bar.close()
    grid["truth"] = x_all[:grid_n]
    for name, fn in methods:  # "classical" -> "classical (bm3d)"
        used = getattr(fn, "used", None)
        if used:
            label = f"{name} ({'/'.join(used)})"
            rows = [{**r, "method": label} if r["method"] == name else r for r in rows]
            grid = {(label if k == name else k): v for k, v in grid.items()}
            methods = [(label if m == name else m, f) for m, f in methods]
    summary = _write(rows, [m[0] for m in methods], sigmas, out_dir, task, data, split, n, seed,
                     mirror and bool(models))
    from .images import save_grid

    save_grid(grid, out_dir / "grid.png", nrow=grid_n, title=f"{task}, sigma {gs:g}")
    log(f"evaluated {len(methods)} methods on {n} images; wrote {out_dir}")
    return summary


def _write(rows: List[Dict[str, Any]], names: List[str], sigmas: List[float], out_dir: Path, task: str,
           data: str, split: str, n: int, seed: int, mirror: bool = False) -> Dict[str, Any]:
    with open(out_dir / "per_image.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "sigma", "index", "psnr", "ssim"])
        w.writeheader()
        w.writerows(rows)
    mean: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name in names:
        mean[name] = {}
        for s in sigmas:
            sel = [r for r in rows if r["method"] == name and r["sigma"] == s]
            ok = [r for r in sel if not (math.isnan(r["psnr"]) or math.isnan(r["ssim"]))]
            p = sum(r["psnr"] for r in ok) / len(ok) if ok else math.nan
            q = sum(r["ssim"] for r in ok) / len(ok) if ok else math.nan
            mean[name][f"{s:g}"] = {"psnr": p, "ssim": q, "n_finite": len(ok), "n": len(sel)}
    head = "| method | " + " | ".join(f"sigma {s:g}" for s in sigmas) + " |"
    lines = [f"# {task}: average PSNR (dB) / SSIM", "",
             f"data `{data}` ({split} split), {n} images, measurement seed {seed}; outputs clamped to "
             "[0, 1]; means over finite outputs (a count where some were not)."
             + (" Trained models mirror-averaged (`--mirror`): each output the mean of the model's outputs "
                "on the measurement and on its mirror image." if mirror else ""),
             "", head, "|---" * (len(sigmas) + 1) + "|"]
    for name in names:
        cells = [_cell(mean[name][f"{s:g}"]) for s in sigmas]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    summary = {"task": task, "data": data, "split": split, "n_images": n, "seed": seed, "sigmas": sigmas,
               "methods": names, "mirror": mirror, "mean": mean}
    safe = {**summary, "mean": {m: {s: {k: (v if math.isfinite(v) else str(v)) for k, v in d.items()}
                                    for s, d in ms.items()} for m, ms in mean.items()}}
    write_json(out_dir / "results.json", safe)
    return summary


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``invprox eval``."""
    from ..cli import DefaultsHelpFormatter

    p = subparsers.add_parser(
        "eval", help="evaluate trained solvers and references (PSNR/SSIM over noise levels)",
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--model", action="append", default=[], help="solver.pt of `invprox train` (repeatable)")
    a("--name", action="append", default=[], help="label of the matching --model (default: prox type)")
    a("--sigmas", type=float, nargs="+", default=[0.10, 0.15, 0.20, 0.25], help="noise levels")
    a("--data", default=None, help="data spec (default: the first model's training data)")
    a("--split", default="val", choices=("train", "val", "validation"),
      help="validation: the images the first model was validated on in training (with --val-data holdout, "
      "the held-out slice of its training data)")
    a("--limit", type=int, default=None, help="evaluate at most this many images")
    a("--task", default=None, help="the task when no --model is given (default: denoising)")
    a("--size", type=int, default=None, help="image side when no --model is given (default: 64)")
    a("--channels", type=int, default=None, choices=(1, 3), help="channels when no --model is given")
    a("--latent-map", action="store_true", help="add latent-space MAP with the Glow of --flow")
    a("--flow", default=None, help="pre-trained Glow (flow.pt) for --latent-map")
    a("--lm-gamma", type=float, default=None, help="latent MAP: weight of ||z||^2 (default: sigma^2)")
    a("--lm-steps", type=int, default=None, help="latent MAP: optimisation steps")
    a("--lm-lr", type=float, default=None, help="latent MAP: learning rate")
    a("--classical", action="store_true", help="add the classical reference (e.g. BM3D for denoising)")
    a("--adapt-start", type=float, default=0.0, metavar="P",
      help="scale each model's smooth-start weight alpha by (sigma / training sigma)^P at each noise level")
    a("--adapt-lam", type=float, default=0.0, metavar="P",
      help="flow prox: scale its latent shrinkage lambda by (sigma / training sigma)^P")
    a("--mirror", action="store_true",
      help="self-ensemble: average each model's outputs on the measurement and on its left-right mirror "
      "image (twice the cost; operators that commute with the mirror: denoising, symmetric blur, "
      "super-resolution)")
    a("--seed", type=int, default=0, help="seed of the measurements")
    a("--batch", type=int, default=16)
    a("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    a("--grid-n", type=int, default=8, help="images per row of grid.png")
    a("--grid-sigma", type=float, default=None, help="noise level shown in grid.png")
    a("--out", default="runs/eval", help="output folder")
    a("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    from ..checkpoint import CheckpointError

    kw = {k: v for k, v in vars(args).items() if k not in ("func", "command", "no_progress", "model", "name")}
    try:
        evaluate(args.model, names=args.name, progress=not args.no_progress, **kw)
    except CheckpointError as err:
        print(f"invprox eval: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main

    sys.exit(main(["eval", *sys.argv[1:]]))
