"""Maximum-likelihood pre-training of a Glow prior: the ``invprox pretrain`` subcommand.

Python::

    from invprox.train.pretrain import pretrain
    metrics = pretrain("celeba64", "runs/glow32", size=32, levels=3, steps=8, hidden=128, n_bits=5)

Command line::

    invprox pretrain --data celeba64 --size 32 --levels 3 --steps 8 --hidden 128 --n-bits 5 --out runs/glow32

Data: ``"embedded"``, any folder of images, or a shared data set name (``invprox.data.make_dataset``); a
folder without ``train``/``val`` subfolders gives its last tenth to validation. Images are loaded into
memory once. The loss is the mean bits/dim of :meth:`invprox.flows.Glow.nll_bpd` (uniform dequantisation
at ``n_bits``). Written to ``out``: ``checkpoint.pt`` (model, optimizer, scheduler, epoch, position in the
epoch, step, every RNG; atomic, after each epoch and when stopped), ``flow.pt`` (:meth:`Glow.save`),
``metrics.json`` and ``samples.png`` (rows: validation images, their reconstructions ``g(f(x))``, samples
at temperature 0.7, then at 1.0 with the mode ``g(0)`` first). ``resume=True`` continues exactly: the
order of every epoch is a function of ``(seed, epoch)`` and the dequantisation noise has its own generator.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from ..checkpoint import load_latest, rng_state, save_checkpoint, set_rng_state
from ..flows.glow import Glow
from .loop_utils import (
    NonFiniteSteps,
    Progress,
    adam,
    dataset_tensor,
    epoch_order,
    machine,
    resolve_device,
    save_image_grid,
    warmup_schedule,
    write_json,
)

__all__ = ["pretrain", "add_parser", "load_images"]

_CKPT = "invprox.pretrain/1"
_MODEL_KEYS = ("levels", "steps", "hidden", "coupling", "prior", "n_bits", "scale_min")


def load_images(
    data: str, size: int, channels: int, val_data: Optional[str] = None,
    n_train: Optional[int] = None, n_val: Optional[int] = None, seed: int = 0,
) -> Tuple[Tensor, Tensor]:
    """Train and validation images ``(N, C, size, size)`` in ``[0, 1]``, stacked in memory."""
    from ..data import make_dataset

    def build(spec: str, split: str, n: Optional[int]):
        kw: Dict[str, Any] = {"seed": seed, "n": n} if spec == "embedded" else {}
        return make_dataset(spec, size=size, channels=channels, split=split, **kw)

    train_ds = build(data, "train", n_train)
    val_ds = build(val_data or data, "val", n_val)
    xt = dataset_tensor(train_ds, n_train)
    root_t, root_v = getattr(train_ds, "root", None), getattr(val_ds, "root", None)
    if val_data is None and root_t is not None and Path(root_t) == Path(str(root_v)) and len(xt) > 1:
        n_hold = max(1, len(xt) // 10)  # one folder, no split: hold out its last tenth
        xv = xt[-n_hold:][: n_val or None]
        return xt[:-n_hold], xv
    return xt, dataset_tensor(val_ds, n_val)


def solver_images(cfg: Dict[str, Any]) -> Tuple[Tensor, Tensor]:
    """The training and validation images of an ``invprox train`` run with config ``cfg`` (its data, size,
    channels, ``n_train``, ``val_data``, ``n_val``, seed): with ``val_data="holdout"`` the last ``n_val``
    (64 when unset) training images are the validation images and are not trained on.

    Raises:
        ValueError: ``holdout`` with no more training images than ``n_val``.
    """
    holdout = cfg["val_data"] == "holdout"
    n_hold = cfg["n_val"] or 64
    n_load = cfg["n_train"] + n_hold if holdout and cfg["n_train"] else cfg["n_train"]
    xt, xv = load_images(cfg["data"], cfg["size"], cfg["channels"], None if holdout else cfg["val_data"],
                         n_load, cfg["n_val"], cfg["seed"])
    if holdout:
        if len(xt) <= n_hold:
            raise ValueError(f"val_data='holdout' needs more than n_val={n_hold} training images, "
                             f"got {len(xt)}")
        xt, xv = xt[:-n_hold], xt[-n_hold:]
    return xt, xv


@torch.no_grad()
def _val_bpd(glow: Glow, xv: Tensor, batch: int, device, seed: int) -> float:
    was = glow.training
    glow.eval()
    gen = torch.Generator().manual_seed(seed + 12345)  # the same noise at every evaluation
    total = 0.0
    for i in range(0, len(xv), batch):
        total += float(glow.nll_bpd(xv[i : i + batch].to(device), generator=gen).sum())
    glow.train(was)
    return total / len(xv)


def pretrain(
    data: str = "embedded",
    out: str = "runs/glow",
    *,
    val_data: Optional[str] = None,
    size: int = 32,
    channels: int = 3,
    levels: int = 3,
    steps: int = 8,
    hidden: int = 128,
    coupling: str = "affine",
    scale_min: float = 0.0,
    prior: str = "gaussian",
    n_bits: int = 5,
    batch: int = 32,
    epochs: int = 10,
    lr: float = 1e-3,
    warmup: int = 200,
    schedule: str = "constant",
    grad_clip: float = 50.0,
    skip_nonfinite: int = 10,
    max_steps: Optional[int] = None,
    max_minutes: Optional[float] = None,
    seed: int = 0,
    resume: bool = False,
    init: Optional[str] = None,
    standard_autograd: bool = False,
    keep_every: Optional[int] = None,
    device: str = "cpu",
    threads: Optional[int] = None,
    n_train: Optional[int] = None,
    n_val: Optional[int] = None,
    init_batch: int = 256,
    eval_batch: int = 128,
    n_samples: int = 8,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Train a :class:`~invprox.flows.Glow` by maximum likelihood; see the module docstring.

    Args:
        data, val_data: data specs (``val_data`` defaults to ``data``'s ``val`` split).
        out: output folder. size, channels: image side and channels.
        levels, steps, hidden, coupling, prior, n_bits, scale_min: the Glow (see
            :class:`~invprox.flows.Glow`).
        batch, epochs, lr, warmup, schedule, grad_clip: Adam, linear warm-up over ``warmup`` steps, then
            ``"constant"`` or ``"cosine"``; gradient-norm clipping (0 disables it).
        skip_nonfinite: skip up to this many steps in a row whose loss or gradient norm is not finite,
            then stop with a checkpoint (:class:`~invprox.train.loop_utils.NonFiniteSteps`).
        max_steps, max_minutes: stop early after this many optimizer steps in total / minutes of this
            call (a checkpoint is written; ``resume`` continues).
        seed: seeds model init, data order and dequantisation noise.
        resume: continue from ``out/checkpoint.pt`` (model settings come from the checkpoint).
        init: start from the weights of a Glow saved by :meth:`Glow.save` (a ``flow.pt``), with a fresh
            optimizer and schedule: training a prior further. Its model settings replace the arguments'.
        standard_autograd: plain autograd instead of the memory-efficient engine.
        keep_every: the engine's drift policy. device: "cpu", "cuda" or "auto".
        threads: ``torch.set_num_threads`` for this process (1 is fastest on a busy shared CPU).
        n_train, n_val: use at most this many images. init_batch: images for ActNorm's data init.
        eval_batch: validation batch. n_samples: images per row of ``samples.png``.
        progress: tqdm bar. log: where progress lines go.

    Returns:
        The metrics (also in ``out/metrics.json``): ``final_val_bpd``, ``history`` (per epoch),
        ``train_curve`` (``[step, bpd]`` per step), ``steps``, ``wall_time_s``, the config, ...
    """
    opts = {k: v for k, v in locals().items() if k not in ("log", "progress")}
    out_dir = Path(out)
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(int(threads))
    ckpt_path = out_dir / "checkpoint.pt"
    state: Optional[Dict[str, Any]] = None
    if resume:
        state = load_latest(ckpt_path)
        if state.get("format") != _CKPT:
            raise ValueError(f"{ckpt_path} is not a pretrain checkpoint")
        gcfg = {"scale_min": 0.0, **state["glow_config"]}
        differ = [k for k in _MODEL_KEYS if opts[k] != gcfg[k]]
        if differ:
            log(f"resume: model settings {differ} taken from the checkpoint")
        size, channels = gcfg["image_size"][0], gcfg["in_channels"]
    init_glow: Optional[Glow] = None
    if init is not None:
        if resume:
            raise ValueError("pretrain: give either resume=True or init=FLOW, not both")
        init_glow = Glow.load(init)
        gcfg = init_glow.config
        differ = [k for k in _MODEL_KEYS if opts[k] != gcfg[k]]
        if differ:
            log(f"init: model settings {differ} taken from {init}")
        size, channels = gcfg["image_size"][0], gcfg["in_channels"]
        levels, steps, hidden = gcfg["levels"], gcfg["steps"], gcfg["hidden"]
        coupling, prior, n_bits = gcfg["coupling"], gcfg["prior"], gcfg["n_bits"]
        scale_min = gcfg["scale_min"]
    xt, xv = load_images(data, size, channels, val_data, n_train, n_val, seed)
    torch.manual_seed(seed)
    if state is None:
        glow = Glow(channels, size, levels, steps, hidden, coupling, prior, n_bits,
                    memory_efficient=not standard_autograd, keep_every=keep_every, seed=seed,
                    scale_min=scale_min)
    else:
        glow = Glow.from_config({**gcfg, "memory_efficient": not standard_autograd,
                                 "keep_every": keep_every})
    glow.to(dev).train()
    n_params = sum(p.numel() for p in glow.parameters())
    bsz = min(batch, len(xt))
    per_epoch = len(xt) // bsz
    total = epochs * per_epoch if max_steps is None else min(max_steps, epochs * per_epoch)
    opt = adam(glow.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_schedule(warmup, total, schedule))
    noise = torch.Generator().manual_seed(seed + 1)
    epoch = pos = step = 0
    history, curve, elapsed = [], [], 0.0
    if init_glow is not None:
        glow.load_state_dict(init_glow.state_dict())
        log(f"initialised from {init} ({init_glow.config['levels']} levels x {init_glow.config['steps']} "
            f"steps x {init_glow.config['hidden']} hidden)")
    elif state is None:
        with torch.no_grad():  # ActNorm data-dependent init on a larger batch
            init_idx = epoch_order(len(xt), seed, -1)[:init_batch]
            glow.nll_bpd(xt[init_idx].to(dev), generator=torch.Generator().manual_seed(seed + 2))
    else:
        glow.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        epoch, pos, step = state["epoch"], state["pos"], state["step"]
        history, curve, elapsed = state["history"], state["train_curve"], state["elapsed_s"]
        noise.set_state(state["noise_rng"])
        set_rng_state(state["rng"])
        log(f"resumed from {ckpt_path} at epoch {epoch}, step {step}")

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "format": _CKPT, "glow_config": dict(glow.config), "model": glow.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
            "pos": pos, "step": step, "history": history, "train_curve": curve,
            "elapsed_s": elapsed + time.time() - t0, "noise_rng": noise.get_state(), "rng": rng_state(),
            "options": opts,
        })

    t0 = time.time()
    bar = Progress(total, step, "pretrain", progress, None if max_minutes is None else 60 * max_minutes)
    stopped = False
    nonfinite = NonFiniteSteps(skip_nonfinite)
    params = [p for p in glow.parameters() if p.requires_grad]
    while epoch < epochs and not stopped:
        order = epoch_order(len(xt), seed, epoch)
        run_sum, run_n = 0.0, 0
        while pos < per_epoch:
            too_long = max_minutes is not None and time.time() - t0 > 60 * max_minutes
            if (max_steps is not None and step >= max_steps) or too_long:
                stopped = True
                break
            x = xt[order[pos * bsz : (pos + 1) * bsz]].to(dev)
            loss = glow.nll_bpd(x, generator=noise).mean()
            lv = float(loss.detach())
            opt.zero_grad(set_to_none=True)
            bad = NonFiniteSteps.check(lv)
            if bad is None:
                loss.backward()
                bound = grad_clip if grad_clip > 0 else math.inf  # an infinite bound only measures the norm
                gnorm = float(torch.nn.utils.clip_grad_norm_(params, bound))
                bad = NonFiniteSteps.check(lv, gnorm)
            if bad is None:
                nonfinite.good()
                opt.step()
            else:
                opt.zero_grad(set_to_none=True)
                if not nonfinite.skip(step + 1, bad):
                    checkpoint()
                    raise RuntimeError(f"{bad} at step {step + 1}, after {nonfinite.limit} non-finite steps "
                                       "in a row (skipped); lower --lr")
            sched.step()
            pos, step = pos + 1, step + 1
            curve.append([step, lv])
            run_sum, run_n = run_sum + lv, run_n + 1
            bar.update(bpd=f"{lv:.3f}", lr=f"{sched.get_last_lr()[0]:.2g}")
        if stopped:
            break
        vb = _val_bpd(glow, xv, eval_batch, dev, seed)
        history.append({"epoch": epoch + 1, "step": step, "val_bpd": vb, "lr": sched.get_last_lr()[0],
                        "train_bpd": run_sum / max(run_n, 1), "time_s": elapsed + time.time() - t0})
        log(f"epoch {epoch + 1}/{epochs}: step {step}, train {history[-1]['train_bpd']:.4f}, "
            f"val {vb:.4f} bits/dim")
        epoch, pos = epoch + 1, 0
        checkpoint()
    bar.close()
    if stopped:
        checkpoint()
    wall = elapsed + time.time() - t0
    final = history[-1]["val_bpd"] if history and history[-1]["step"] == step else None
    if final is None:
        final = _val_bpd(glow, xv, eval_batch, dev, seed)
    glow.eval()
    metrics = {
        "final_val_bpd": final, "best_val_bpd": min([h["val_bpd"] for h in history] + [final]),
        "steps": step, "epochs_done": epoch, "stopped_early": stopped, "wall_time_s": wall,
        "skipped_steps": nonfinite.skipped,
        "images_per_s": step * bsz / max(wall, 1e-9), "n_params": n_params, "n_train": len(xt),
        "n_val": len(xv), "device": str(dev), "machine": machine(dev), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "config": dict(glow.config), "options": opts,
        "history": history, "train_curve": curve,
    }
    glow.save(out_dir / "flow.pt", extra={"final_val_bpd": final, "steps": step})
    write_json(out_dir / "metrics.json", metrics)
    _write_grid(glow, xv, out_dir / "samples.png", n_samples, seed, dev)
    log(f"done: {step} steps, val {final:.4f} bits/dim, {wall / 60:.1f} min; wrote {out_dir}")
    return metrics


@torch.no_grad()
def _write_grid(glow: Glow, xv: Tensor, path: Path, n: int, seed: int, dev) -> None:
    x01 = xv[:n].to(dev)
    rec = glow.postprocess(glow.inverse(glow(glow.preprocess(x01))))
    gen = torch.Generator().manual_seed(seed + 3)
    s07 = glow.sample(2 * n, 0.7, gen)
    s10 = torch.cat([glow.mode(1), glow.sample(n - 1, 1.0, gen)]) if n > 1 else glow.mode(1)
    rows = torch.cat([x01, rec, s07, s10]).cpu()
    save_image_grid(rows, path, nrow=n, scale=max(1, 64 // x01.shape[-1]))


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``invprox pretrain``."""
    from ..cli import DefaultsHelpFormatter

    p = subparsers.add_parser(
        "pretrain", help="train a Glow prior by maximum likelihood",
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--data", default="embedded", help="'embedded', an image folder, or a shared data set (celeba64)")
    a("--val-data", default=None, help="validation data (default: the 'val' split of --data)")
    a("--out", default="runs/glow", help="output folder")
    a("--size", type=int, default=32, help="image side (divisible by 2**levels)")
    a("--channels", type=int, default=3, choices=(1, 3))
    a("--levels", type=int, default=3)
    a("--steps", type=int, default=8, help="flow steps per level")
    a("--hidden", type=int, default=128, help="hidden channels of the coupling networks")
    a("--coupling", default="affine", choices=("affine", "additive"))
    a("--scale-min", type=float, default=0.0,
      help="lower bound of the affine couplings' scale (0: Glow's original; 0.5 keeps the inverse stable "
           "on noisy inputs, for use as a prior in solvers)")
    a("--prior", default="gaussian", choices=("gaussian", "laplace"))
    a("--n-bits", type=int, default=5, help="bits per colour channel of the data model")
    a("--batch", type=int, default=32)
    a("--epochs", type=int, default=10)
    a("--lr", type=float, default=1e-3)
    a("--warmup", type=int, default=200, help="linear learning-rate warm-up steps")
    a("--schedule", default="constant", choices=("constant", "cosine"))
    a("--grad-clip", type=float, default=50.0, help="max gradient norm (0: off)")
    a("--skip-nonfinite", type=int, default=10, metavar="N",
      help="skip up to N steps in a row whose loss or gradient is not finite, then stop")
    a("--max-steps", type=int, default=None, help="stop after this many steps in total")
    a("--max-minutes", type=float, default=None, help="stop after this many minutes (this run)")
    a("--seed", type=int, default=0)
    a("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    a("--init", default=None, metavar="FLOW",
      help="start from a saved Glow (flow.pt) with a fresh optimizer; its model settings win")
    a("--standard-autograd", action="store_true", help="plain autograd instead of the engine")
    a("--keep-every", type=int, default=None, help="engine drift policy: keep every n-th state")
    a("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    a("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a("--n-train", type=int, default=None, help="use at most this many training images")
    a("--n-val", type=int, default=None, help="use at most this many validation images")
    a("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    kw = {k: v for k, v in vars(args).items() if k not in ("func", "command", "no_progress")}
    metrics = pretrain(progress=not args.no_progress, **kw)
    return 0 if math.isfinite(metrics["final_val_bpd"]) else 1


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main

    sys.exit(main(["pretrain", *sys.argv[1:]]))
