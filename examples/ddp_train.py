"""Train a tiny unrolled flow-prox denoiser with DistributedDataParallel through the engine.

What it shows:

* :class:`invprox.solvers.FlowProxSolver` (all K folds one :class:`invprox.InvertibleChain`, activation
  memory one block deep) wrapped in ``torch.nn.parallel.DistributedDataParallel`` with its default
  settings: no ``find_unused_parameters``, buffers broadcast every step.
* Each process trains on its shard of every global batch (:func:`invprox.distributed.make_loader`);
  DDP averages the gradients, so the run equals one process on the whole global batch
  (``tests/test_distributed.py`` checks this to 1e-10 in float64).
* Rank-0-only logging and checkpointing (:func:`~invprox.distributed.print0`,
  :func:`~invprox.distributed.save_on_main`), and a final check that the ranks' parameters agree.

Launch (CPU, gloo; on GPUs the backend is nccl and each rank takes ``cuda:LOCAL_RANK``)::

    torchrun --nproc_per_node=2 examples/ddp_train.py --steps 5

It also runs as a plain single process (``python examples/ddp_train.py --steps 5``). Data: 16x16 grey
crops of the embedded scikit-image pictures with Gaussian noise (sigma 0.2), or random smooth images
with ``--data synthetic`` (or when scikit-image is missing). The Glow is not pre-trained here (a short
data-dependent initialisation only): this is a demonstration of the mechanics, not of PSNR.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from invprox import distributed as D
from invprox.flows import Glow
from invprox.physics import make_physics
from invprox.solvers import FlowProxSolver


def build_data(kind: str, size: int, n: int, sigma: float, seed: int) -> Dataset:
    if kind == "embedded":
        try:
            from invprox.data import EmbeddedPatches, NoisyPairs

            return NoisyPairs(EmbeddedPatches(size=size, channels=1, n=n, seed=seed), sigma, seed=seed)
        except ModuleNotFoundError as err:  # scikit-image missing
            D.print0(f"embedded data unavailable ({err}); using synthetic images")
    g = torch.Generator().manual_seed(seed)
    clean = F.avg_pool2d(torch.rand(n, 1, size + 4, size + 4, generator=g), 5, stride=1)
    noisy = clean + sigma * torch.randn(clean.shape, generator=g)
    return TensorDataset(noisy, clean)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="optimiser steps")
    p.add_argument("--batch", type=int, default=4, help="samples per step per process")
    p.add_argument("--K", type=int, default=2, help="folds of the unrolled solver")
    p.add_argument("--size", type=int, default=16, help="image side")
    p.add_argument("--sigma", type=float, default=0.2, help="noise std")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--data", choices=("embedded", "synthetic"), default="embedded")
    p.add_argument("--checkpoint", default=None, help="write a checkpoint here (rank 0) at the end")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    info = D.init_distributed()  # gloo on CPU, nccl on CUDA; a no-op without torchrun
    torch.set_num_threads(1 if info.world_size > 1 else torch.get_num_threads())
    torch.manual_seed(args.seed)  # same initial model everywhere (DDP also broadcasts rank 0's)

    data = build_data(args.data, args.size, n=max(64, 2 * args.batch * info.world_size), sigma=args.sigma,
                      seed=args.seed)
    loader = D.make_loader(data, args.batch, shuffle=True, seed=args.seed)

    glow = Glow(in_channels=1, image_size=args.size, levels=1, steps=2, hidden=16)
    with torch.no_grad():  # ActNorm's data init BEFORE wrapping: every rank uses the same batch
        glow(torch.stack([data[i][1] for i in range(8)]) - 0.5)
    op = make_physics("denoising", (1, args.size, args.size))
    solver = FlowProxSolver(glow, op, K=args.K)
    model = D.wrap_ddp(solver)  # DistributedDataParallel(solver); solver itself in one process
    opt = torch.optim.Adam(solver.param_groups(lr_net=args.lr, lr_step=1e-2))

    D.print0(f"world size {info.world_size}, backend {info.backend or 'none'}, device {info.device}, "
             f"global batch {args.batch * info.world_size}, K={args.K}, "
             f"{sum(p.numel() for p in solver.parameters())} parameters")
    step, epoch, t0 = 0, 0, time.perf_counter()
    while step < args.steps:
        D.set_epoch(loader, epoch)
        for noisy, clean in loader:
            noisy, clean = noisy.to(info.device), clean.to(info.device)
            loss = F.mse_loss(model(noisy), clean)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # the engine's backward; DDP all-reduces the gradients
            opt.step()
            step += 1
            psnr = -10 * torch.log10(loss.detach())
            D.print0(f"step {step:3d}  loss {loss.item():.5f}  PSNR(rank 0 shard) {psnr.item():.2f} dB")
            if step >= args.steps:
                break
        epoch += 1
    diff = D.max_parameter_difference(solver)
    D.print0(f"{args.steps} steps in {time.perf_counter() - t0:.2f} s; "
             f"largest parameter difference between ranks: {diff:.3g}")
    if args.checkpoint:
        D.save_on_main(args.checkpoint, {"solver": solver.state_dict(), "step": step})
        D.print0(f"checkpoint written to {args.checkpoint}")
    del model  # before cleanup: the DDP reducer must not hold the process group's last reference
    D.cleanup()
    return 0 if diff == 0.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
