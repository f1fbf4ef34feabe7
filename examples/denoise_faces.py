"""Denoise faces with the unrolled flow-prox solver: the seed paper's Table 1 set-up in miniature.

What it shows: the pre-trained Glow (``benchmarks/results/glow_celeba32.pt``, 32x32 RGB CelebA faces) is
copied into each of the K = 4 folds of :class:`invprox.solvers.FlowProxSolver` (Wei et al.: data
consistency, Glow, latent shrinkage ``z / (1 + lambda_k)``, inverse Glow), which is then fine-tuned end to
end at sigma = 0.2 through the python API (the ``invprox train`` command line does the same at scale). All
K folds are one :class:`invprox.InvertibleChain`, so the backward pass stores one block's activations.

Run::

    python examples/denoise_faces.py            # 30 steps of batch 8 at K = 4: about 2 minutes on CPU
    python examples/denoise_faces.py --tiny     # seconds: K = 1, one step, two faces

Prints the calibration, the training loss, then the mean PSNR on validation faces (people not seen in
training) of the noisy input, of the solver calibrated but untrained (``solver.calibrate``: the smooth
start, mu_k and a lambda per latent level set from 16 training pairs) and after fine-tuning, and the
learned mu_k, lambda_k. Writes ``grid.png`` (noisy / calibrated / after / clean) and ``metrics.json`` to
``runs/examples/denoise_faces`` (``--out``). Without ``../shared/data/celeba64`` the embedded
scikit-image pictures stand in (with a message). Options: ``--help``.

What to expect (2-core CPU, 16 faces): noisy 15.04 dB, calibrated 20.82 dB, after 30 steps 20.83 dB. The
calibrated solver is a denoiser from the start, almost all of it the smooth start: the calibration picks
the smallest step and shrinkage, because any larger shrinkage of this Glow's latent makes a face worse
before training. 30 steps at ``lr_net=1e-4`` barely move it; ``invprox train`` (``benchmarks/TABLE1.md``)
shows what 25 CPU minutes of training do.
"""

from __future__ import annotations

import torch

from invprox.physics import make_physics
from invprox.solvers import FlowProxSolver

from _common import (
    calibrate,
    face_parser,
    fine_tune,
    learned_steps,
    load_faces,
    load_glow,
    reconstruct,
    report,
    setup,
)

# mu_init, lam_init: the values before calibration (which sets mu_k and lambda_k from training pairs);
# with FlowProxSolver's defaults (0.5, 0.1) and the mode as start this Glow's inverse overflowed (NaN)
REAL = dict(steps=30, batch=8, K=4, n_val=16, n_train=1024, sigma=0.2, lr_net=1e-4, lr_step=5e-2,
            mu_init=0.1, lam_init=0.01)
TINY = dict(steps=1, batch=2, K=1, n_val=2, n_train=4)


def main(argv=None) -> dict:
    args = face_parser(__doc__, "denoise_faces", REAL, TINY).parse_args(argv)
    out = setup(args)

    glow = load_glow(args.flow)  # Glow.load(path): the trained flow, in evaluation mode
    x_train = load_faces(args.data, "train", args.n_train, args.seed)
    x_val = load_faces(args.data, "val", args.n_val, args.seed)
    op = make_physics("denoising", (3, 32, 32))  # A = I
    # K untied copies of the Glow; per fold a learned step mu_k (fraction of 1/||A||^2) and shrinkage lambda_k
    solver = FlowProxSolver(glow, op, K=args.K, mu_init=args.mu_init, lam_init=args.lam_init)
    print(f"FlowProxSolver: K={args.K}, {solver.fold_blocks()} engine blocks per fold, "
          f"{sum(p.numel() for p in solver.parameters())} parameters; sigma={args.sigma}")

    def measure(x, g):
        return op.measure(x, args.sigma, g), op  # y = x + sigma n

    y_val = op.measure(x_val, args.sigma, torch.Generator().manual_seed(args.seed + 100))
    calibrate(solver, x_train, measure, seed=args.seed)
    before = reconstruct(solver, y_val)
    fine_tune(solver, x_train, measure, args.steps, args.batch, args.lr_net, args.lr_step, args.seed)
    after = reconstruct(solver, y_val)
    steps = learned_steps(solver)
    print(f"learned mu_k {steps['mu_fraction']}, lambda_k {steps['lambda']}")
    rows = {"noisy": y_val, "flow prox, calibrated": before, f"flow prox, {args.steps} steps": after}
    return report(out, x_val, rows, title=f"denoising sigma={args.sigma}, K={args.K}",
                  extra={"K": args.K, "sigma": args.sigma, "steps": args.steps, **steps})


if __name__ == "__main__":
    main()
