"""Latent-space MAP with the pre-trained Glow (Asim et al. 2020): denoise faces without training anything.

What it shows: :class:`invprox.solvers.LatentMAP` minimises ``||y - A(g(z) + 0.5)||^2 + gamma ||z||^2``
over the latent ``z`` of the pre-trained Glow (``benchmarks/results/glow_celeba32.pt``, 32x32 RGB CelebA
faces), ``gamma = sigma^2`` (the MAP estimate for a standard normal latent), by Adam started at the mode
``z = 0``. The flow's weights stay frozen; ``g`` runs through the engine, so a deep flow costs one block
of activation memory per iteration. Any operator works (``--task``); denoising at sigma 0.2 is the default.

Run::

    python examples/latent_map.py               # 8 validation faces, 100 Adam steps: under a minute on CPU
    python examples/latent_map.py --tiny        # seconds: 2 faces, 3 steps

Prints the bytes saved for backward by one evaluation of the objective under standard autograd and
through the engine, the objective every few iterations, and the mean PSNR of the noisy input (``A^T y``)
and of the MAP estimate. Writes ``grid.png`` (``A^T y`` / latent MAP / clean) and ``metrics.json`` (PSNR,
saved bytes, objective history) to ``runs/examples/latent_map`` (``--out``). Without
``../shared/data/celeba64`` the embedded scikit-image pictures stand in (with a message).

Measured with the defaults (2-core CPU): noisy 15.16 dB, latent MAP 23.05 dB (Asim et al. report 27.09 dB
at 64x64); 3.4 MiB vs 36 KiB saved per image. More steps fit the noise (300 steps: 19.5 dB): stop early.
"""

from __future__ import annotations

import time

import torch

import invprox
from invprox.physics import make_physics
from invprox.solvers import LatentMAP

from _common import face_parser, load_faces, load_glow, report, setup

REAL = dict(steps=100, n_val=8, sigma=0.2)
TINY = dict(steps=3, n_val=2)


def main(argv=None) -> dict:
    p = face_parser(__doc__, "latent_map", REAL, TINY)
    p.add_argument("--task", default="denoising",
                   help="denoising, inpainting, deblurring, superresolution, compressed_sensing")
    p.add_argument("--lr", type=float, default=0.02, help="Adam step on z")
    p.add_argument("--gamma", type=float, default=None, help="weight of ||z||^2 (default sigma^2)")
    args = p.parse_args(argv)
    out = setup(args)

    glow = load_glow(args.flow)
    x = load_faces(args.data, "val", args.n_val, args.seed)
    seeded = args.task in ("inpainting", "compressed_sensing")  # the random mask / matrix
    op = make_physics(args.task, (3, 32, 32), **({"seed": args.seed} if seeded else {}))
    y = op.measure(x, args.sigma, torch.Generator().manual_seed(args.seed + 100))
    gamma = args.sigma**2 if args.gamma is None else args.gamma
    solver = LatentMAP(glow, op, gamma=gamma, steps=args.steps, lr=args.lr)
    print(f"{solver} on {len(x)} images, {args.task} at sigma={args.sigma}")
    saved = {}
    glow.requires_grad_(False)  # as during solver(y): only z is optimised
    for efficient in (False, True):  # activation memory of one objective evaluation, per image
        glow.memory_efficient = efficient
        z = torch.zeros_like(x, requires_grad=True)
        _, rec = invprox.saved_tensor_bytes(lambda z=z: solver.objective(z, y).sum())
        saved["invprox" if efficient else "standard autograd"] = rec.bytes // len(x)
    glow.requires_grad_(True)
    # left at memory_efficient = True (Glow.load's default): g runs through the engine
    print("bytes saved for backward per image, one objective evaluation: "
          + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in saved.items()))
    t0 = time.perf_counter()
    x_map = solver(y)
    every = max(1, args.steps // 5)
    print("objective (batch mean): " + ", ".join(f"{i}: {v:.1f}" for i, v in enumerate(solver.history)
                                                  if i % every == 0 or i == len(solver.history) - 1))
    print(f"{args.steps} steps in {time.perf_counter() - t0:.1f} s")
    return report(out, x, {"A^T y": op.A_adjoint(y), "latent MAP": x_map},
                  title=f"latent MAP, {args.task}, sigma={args.sigma}, {args.steps} Adam steps",
                  extra={"task": args.task, "sigma": args.sigma, "gamma": gamma, "steps": args.steps,
                         "saved_bytes_per_image": saved, "history": solver.history})


if __name__ == "__main__":
    main()
