"""Validation PSNR of the unrolled flow-prox solver vs the number of folds K, for a fixed budget of steps.

Denoising at ``--sigma`` (0.2) on real images (default: CelebA faces from ``../shared/data/celeba64``,
resized to ``--size``; ``--data embedded`` uses the scikit-image photographs that ship with the package).
All K start from the same pre-trained Glow:

1. the Glow: ``--flow PATH`` (a file written by :meth:`invprox.flows.Glow.save`); else
   ``benchmarks/results/solver_k_glow.pt`` when it exists with the same configuration; else a small Glow
   (``--levels``, ``--steps``, ``--hidden``, ``--coupling``, additive by default) is pre-trained here by
   maximum likelihood
   (``glow.nll_bpd(x01).mean()``, Adam, ``--pretrain-steps`` steps) and saved there;
2. for each K: ``FlowProxSolver(glow, denoising, K)`` (untied: each fold a copy of the Glow), trained for
   ``--train-steps`` steps of batch ``--batch`` (MSE, Adam with the solver's two groups: flows at
   ``--lr-net``, mu/lambda at ``--lr-step``), the same images and noise for every K, through the invprox
   engine with the drift policy (``keep_every`` = one fold; ``--method standard`` trains with ordinary
   autograd, which gives the same gradients to ~1e-5 and is faster on a CPU);
3. validation PSNR (outputs clamped to [0, 1]) on ``--n-val`` images with fixed noise, before and after
   training, next to the PSNR of the noisy input.

Writes ``<out>/solver_k_psnr.json``, ``.md`` and ``.png``.

Usage::

    python benchmarks/solver_k_psnr.py                                   # K = 1 2 4 8, celeba64 32x32
    python benchmarks/solver_k_psnr.py --ks 1 2 4 8 16 --train-steps 200
    python benchmarks/solver_k_psnr.py --data embedded --pretrain-steps 300
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
import warnings
from typing import Any, Dict, List

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import invprox  # noqa: E402
from invprox.data import make_dataset  # noqa: E402
from invprox.flows import Glow  # noqa: E402
from invprox.metrics import psnr  # noqa: E402
from invprox.physics import make_physics  # noqa: E402
from invprox.solvers.flow_prox import FlowProxSolver  # noqa: E402

from _common import command_line, describe_machine, machine_info, markdown_table, write_results  # noqa: E402
from _harness import git_commit  # noqa: E402
from solver_runner import fix_channel_range  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def load_split(args, split: str, n: int) -> torch.Tensor:
    kw: Dict[str, Any] = {"seed": args.seed, "n": n} if args.data == "embedded" else {}
    ds = make_dataset(args.data, size=args.size, channels=args.channels, split=split, **kw)
    n = min(n, len(ds))
    if args.data != "embedded" and split == "train":
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed))[:n].tolist()
    else:
        idx = list(range(n))
    return torch.stack([ds[i] for i in idx])


def glow_config(args) -> Dict[str, Any]:
    return dict(in_channels=args.channels, image_size=[args.size, args.size], levels=args.levels,
                steps=args.steps, hidden=args.hidden, coupling=args.coupling)


def get_flow(args, xt: torch.Tensor, xv: torch.Tensor, log: Dict[str, Any]) -> Glow:
    """Load ``--flow``, or the cached pre-trained Glow, or pre-train one (and cache it)."""
    path = args.flow or os.path.join(args.out, "solver_k_glow.pt")
    if os.path.exists(path) and not args.retrain:
        glow = Glow.load(path)
        same = all(glow.config.get(k) == v for k, v in glow_config(args).items())
        if args.flow or same:
            try:  # moved from invprox.train.checkpoint (commit d43e1b1)
                from invprox.checkpoint import load_checkpoint
            except ImportError:
                from invprox.train.checkpoint import load_checkpoint

            extra = load_checkpoint(path).get("extra", {})
            log.update(source=f"loaded {os.path.relpath(path)}", config=dict(glow.config), **extra)
            fix_channel_range(glow)
            return glow
    torch.manual_seed(args.seed)
    glow = Glow(args.channels, args.size, levels=args.levels, steps=args.steps, hidden=args.hidden,
                coupling=args.coupling, seed=args.seed, memory_efficient=args.pretrain_engine)
    fix_channel_range(glow)
    opt = torch.optim.Adam(glow.parameters(), lr=args.pretrain_lr)
    g = torch.Generator().manual_seed(args.seed + 100)
    glow.train()
    t0, c0 = time.perf_counter(), time.process_time()
    bpds: List[float] = []
    for step in range(args.pretrain_steps):
        lr = args.pretrain_lr * min(1.0, (step + 1) / args.pretrain_warmup)
        for grp in opt.param_groups:
            grp["lr"] = lr
        idx = torch.randint(len(xt), (args.pretrain_batch,), generator=g)
        loss = glow.nll_bpd(xt[idx], generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(glow.parameters(), 50.0)
        opt.step()
        bpds.append(float(loss))
        if (step + 1) % 100 == 0:
            print(f"pretrain step {step + 1}: {sum(bpds[-100:]) / 100:.3f} bits/dim "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    glow.eval()
    with torch.no_grad():
        gv = torch.Generator().manual_seed(args.seed + 12345)
        val_bpd = float(torch.cat([glow.nll_bpd(xv[i:i + 64], generator=gv)
                                   for i in range(0, len(xv), 64)]).mean())
    log.update(source="pre-trained here", steps=args.pretrain_steps, batch=args.pretrain_batch,
               lr=args.pretrain_lr, train_bpd_last100=sum(bpds[-100:]) / len(bpds[-100:]),
               val_bpd=val_bpd, seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
               config=dict(glow.config))
    glow.memory_efficient = True
    os.makedirs(os.path.dirname(path), exist_ok=True)
    glow.save(path, extra={"val_bpd": val_bpd, "data": args.data, "size": args.size,
                           "steps": args.pretrain_steps})
    log["saved"] = os.path.relpath(path)
    return glow


@torch.no_grad()
def evaluate(solver: FlowProxSolver, xv: torch.Tensor, yv: torch.Tensor, batch: int) -> float:
    was = solver.training
    solver.eval()
    vals = []
    for i in range(0, len(xv), batch):
        out = solver(yv[i:i + batch])
        vals.append(psnr(out.clamp(0, 1), xv[i:i + batch]))
    solver.train(was)
    return float(torch.cat(vals).mean())


def train_k(args, glow: Glow, K: int, xt, xv, yv) -> Dict[str, Any]:
    torch.manual_seed(args.seed)
    physics = make_physics("denoising", (args.channels, args.size, args.size))
    solver = FlowProxSolver(copy.deepcopy(glow), physics, K=K)
    if args.method == "standard":
        solver.memory_efficient = False
    else:
        solver.memory_efficient = True
        solver.chain.keep_every = solver.fold_blocks()
    psnr_init = evaluate(solver, xv, yv, args.eval_batch)
    opt = torch.optim.Adam(solver.param_groups(lr_net=args.lr_net, lr_step=args.lr_step))
    g = torch.Generator().manual_seed(args.seed + 7)  # the same images and noise for every K
    solver.train()
    t0, c0 = time.perf_counter(), time.process_time()
    losses, skipped = [], 0
    for _ in range(args.train_steps):
        idx = torch.randint(len(xt), (args.batch,), generator=g)
        x = xt[idx]
        y = x + args.sigma * torch.randn(x.shape, generator=g)
        loss = F.mse_loss(solver(y), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not math.isfinite(float(loss)):
            skipped += 1
            continue
        torch.nn.utils.clip_grad_norm_(solver.parameters(), args.clip)
        opt.step()
        losses.append(float(loss))
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    res = {
        "K": K, "psnr_init": psnr_init, "psnr": evaluate(solver, xv, yv, args.eval_batch),
        "train_loss_last20": sum(losses[-20:]) / max(1, len(losses[-20:])), "skipped_steps": skipped,
        "seconds": secs, "cpu_seconds": cpu,
        "mu": [float(dc.fraction().detach()) for dc in solver.dc],
        "lam": [float(s.lam.detach()) for s in solver.shrink],
        "params": sum(p.numel() for p in solver.parameters()),
    }
    print(f"K={K}: PSNR {res['psnr_init']:.2f} -> {res['psnr']:.2f} dB, {skipped} steps skipped "
          f"({secs:.0f} s, {cpu:.0f} s CPU)", file=sys.stderr, flush=True)
    return res


def render(payload: Dict[str, Any]) -> str:
    c, fl = payload["config"], payload["flow"]
    how = "the invprox engine, keep_every = one fold" if c["method"] != "standard" else "standard autograd"
    md = ["# Flow-prox solver: validation PSNR vs K\n",
          f"Denoising sigma {c['sigma']} on {c['data']} {c['size']}x{c['size']} "
          f"({c['n_train']} training, {c['n_val']} validation images, split by identity for celeba64). "
          f"Glow levels {c['levels']}, steps {c['steps']}, hidden {c['hidden']}, {c['coupling']} couplings: "
          f"{fl['source']}"
          + (f", {fl['steps']} steps, validation {fl['val_bpd']:.3f} bits/dim" if "val_bpd" in fl else "")
          + f". Each K: {c['train_steps']} steps of batch {c['batch']} from the same Glow (untied folds), "
          f"Adam (flows {c['lr_net']}, mu/lambda {c['lr_step']}), trained with "
          f"{how}. "
          f"Machine: {describe_machine(payload['machine'])}.\n",
          f"Command: `{payload['command']}`\n",
          f"Noisy input: {payload['psnr_noisy']:.2f} dB.\n"]
    rows = [[r["K"], f"{r['psnr_init']:.2f}", f"{r['psnr']:.2f}", f"{r['train_loss_last20']:.5f}",
             ", ".join(f"{m:.2f}" for m in r["mu"][:8]) + (" ..." if len(r["mu"]) > 8 else ""),
             ", ".join(f"{v:.2f}" for v in r["lam"][:8]) + (" ..." if len(r["lam"]) > 8 else ""),
             f"{r['params']:,}", f"{r['seconds']:.0f}", f"{r['cpu_seconds']:.0f}"]
            for r in payload["rows"]]
    md.append(markdown_table(["K", "PSNR before training (dB)", "PSNR trained (dB)", "train MSE (last 20)",
                              "mu_k (x 1/||A||^2)", "lambda_k", "parameters", "wall s", "CPU s"], rows))
    md.append(f"\nTotal: {payload['total_seconds']:.0f} s wall, {payload['total_cpu_seconds']:.0f} s CPU.\n")
    return "\n".join(md)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Validation PSNR of the unrolled flow-prox solver vs K (denoising), fixed step budget, "
        "all K from the same pre-trained Glow.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8], help="numbers of folds K")
    p.add_argument("--data", default="celeba64", help="'celeba64', 'embedded', or a folder of images")
    p.add_argument("--size", type=int, default=32, help="image side")
    p.add_argument("--channels", type=int, default=3, help="image channels")
    p.add_argument("--n-train", type=int, default=2000, help="training images loaded")
    p.add_argument("--n-val", type=int, default=64, help="validation images")
    p.add_argument("--sigma", type=float, default=0.2, help="noise std (images in [0, 1])")
    p.add_argument("--levels", type=int, default=2, help="Glow levels")
    p.add_argument("--steps", type=int, default=4, help="Glow steps per level")
    p.add_argument("--hidden", type=int, default=32, help="Glow hidden channels")
    p.add_argument("--coupling", choices=["additive", "affine"], default="additive",
                   help="Glow couplings. With 'affine' and a briefly pre-trained Glow the first g_k(z / (1 + "
                   "lambda)) on noisy inputs overflows (the inverse divides by the sigmoid scale; see "
                   "SOLVER_K.md), so the default is 'additive'")
    p.add_argument("--flow", default=None, help="a saved Glow to start from (skips pre-training)")
    p.add_argument("--retrain", action="store_true", help="pre-train even if the cached Glow exists")
    p.add_argument("--pretrain-steps", type=int, default=1000, help="maximum-likelihood steps")
    p.add_argument("--pretrain-batch", type=int, default=32, help="pre-training batch")
    p.add_argument("--pretrain-lr", type=float, default=1e-3, help="pre-training learning rate")
    p.add_argument("--pretrain-warmup", type=int, default=50, help="linear warm-up steps")
    p.add_argument("--pretrain-engine", action="store_true",
                   help="pre-train through the engine (default: standard autograd, faster on a CPU)")
    p.add_argument("--train-steps", type=int, default=300, help="solver training steps per K")
    p.add_argument("--batch", type=int, default=8, help="solver training batch")
    p.add_argument("--lr-net", type=float, default=3e-4, help="learning rate of the folds' flows")
    p.add_argument("--lr-step", type=float, default=5e-2, help="learning rate of mu_k and lambda_k")
    p.add_argument("--clip", type=float, default=10.0, help="gradient-norm clipping")
    p.add_argument("--method", choices=["invprox", "standard"], default="invprox",
                   help="train through the engine (keep_every = one fold) or standard autograd")
    p.add_argument("--eval-batch", type=int, default=32, help="evaluation batch")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: default)")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, noise and weights")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="output folder")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    t0, c0 = time.perf_counter(), time.process_time()
    xt = load_split(args, "train", args.n_train)
    xv = load_split(args, "val", args.n_val)
    yv = xv + args.sigma * torch.randn(xv.shape, generator=torch.Generator().manual_seed(args.seed + 999))
    flow_log: Dict[str, Any] = {}
    glow = get_flow(args, xt, xv, flow_log)
    rows = [train_k(args, glow, K, xt, xv, yv) for K in args.ks]
    payload = {
        "benchmark": "solver_k_psnr",
        "command": command_line(__file__, argv),
        "machine": machine_info("cpu", invprox=invprox.__version__),
        "git_commit": git_commit(),
        "config": dict(vars(args), n_train=len(xt), n_val=len(xv)),
        "flow": flow_log,
        "psnr_noisy": float(psnr(yv.clamp(0, 1), xv).mean()),
        "psnr_noisy_unclamped": float(psnr(yv, xv).mean()),
        "rows": rows,
        "total_seconds": time.perf_counter() - t0,
        "total_cpu_seconds": time.process_time() - c0,
    }
    md = render(payload)
    paths = write_results(args.out, "solver_k_psnr", payload, md)
    if not args.no_plot:
        from plots import plot_psnr

        paths.append(plot_psnr(payload, os.path.join(args.out, "solver_k_psnr.png")))
    print(md)
    print("wrote " + ", ".join(paths), file=sys.stderr)


if __name__ == "__main__":
    main()
