"""Gradient errors of the engine under autocast (bfloat16, float16) on CPU: the table of
``docs/reliability.md``.

For every model, the relative error of the whole gradient (parameters and inputs) of float32 engine,
autocast autograd and autocast engine against float32 autograd
(:func:`invprox.core.precision.autocast_gradient_errors`): couplings alone, Glows of 4 and 16 steps and
flow-prox solvers (whose 1x1 convolutions run in float32: ``InvConv1x1`` does so itself).

Usage::

    python benchmarks/precision_errors.py                 # CPU autocast (docs/reliability.md)
    python benchmarks/precision_errors.py --device cuda   # CUDA autocast (make bench-gpu)
"""

from __future__ import annotations

import argparse

import torch

from invprox.core import InvertibleChain
from invprox.core.precision import autocast_gradient_errors
from invprox.flows import AffineCoupling, Glow
from invprox.physics import make_physics
from invprox.solvers import FlowProxSolver
from invprox.testing import randomize_parameters

#: the seed paper's solver (the flow's mode as start, one lambda per fold), as measured in the docs
PAPER = {"start": "mode", "lam_per": "scalar"}

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (autocast of that device)")
    dev = torch.device(p.parse_args(argv).device)
    torch.set_num_threads(1)

    def glow(steps: int) -> Glow:
        """8x8 grey, B = 4; its 1x1 convolutions run in float32 under autocast (InvConv1x1 does so)."""
        torch.manual_seed(0)
        g = Glow(in_channels=1, image_size=8, levels=1, steps=steps, hidden=16)
        randomize_parameters(g, 0.1, seed=0)
        with torch.no_grad():
            g(torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)) - 0.5)
        return g

    gen = torch.Generator().manual_seed(0)
    xc = torch.rand(4, 1, 8, 8, generator=gen)
    y = xc + 0.2 * torch.randn(xc.shape, generator=gen)
    mse = lambda out: (out.float() - xc).square().mean()  # noqa: E731
    bf16, fp16 = torch.bfloat16, torch.float16
    torch.manual_seed(0)
    couplings = InvertibleChain([AffineCoupling(8, hidden=16) for _ in range(8)])
    randomize_parameters(couplings, 0.1, seed=1)
    cases = [("8 affine couplings (C=8, 8x8)", couplings, (torch.randn(4, 8, 8, 8, generator=gen),), None,
              bf16)]
    for steps in (4, 16):
        cases.append((f"Glow steps={steps}", glow(steps), (xc - 0.5,), None, bf16))
    for K in (1, 4):
        solver = FlowProxSolver(glow(4), make_physics("denoising", (1, 8, 8)), K=K, **PAPER)
        cases.append((f"FlowProxSolver K={K}", solver, (y,), mse, bf16))
    solver = FlowProxSolver(glow(4), make_physics("denoising", (1, 8, 8)), K=4, **PAPER)
    cases.append(("FlowProxSolver K=4", solver, (y,), mse, fp16))
    print("| model | autocast | engine fp32 vs fp32 | autocast vs fp32 | engine+autocast vs fp32 "
          "| engine+autocast vs autocast |")
    print("|---|---|---|---|---|---|")
    print(f"device: {dev}")
    xc = xc.to(dev)  # what mse compares with
    for name, model, inputs, loss, dtype in cases:
        e = autocast_gradient_errors(model.to(dev), *[t.to(dev) for t in inputs], loss_fn=loss, dtype=dtype)
        print(f"| {name} | {str(dtype)[6:]} | {e['engine_fp32']:.1e} | {e['autocast']:.1e} "
              f"| {e['engine_autocast']:.1e} | {e['engine_vs_autocast']:.1e} |")


if __name__ == "__main__":
    main()
