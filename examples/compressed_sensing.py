"""Compressed sensing of faces with the unrolled flow-prox solver.

What it shows: :func:`invprox.physics.make_physics` builds ``y = G vec(x)``, ``G`` an ``m x n`` Gaussian
matrix (``m = ratio * n``, ``n = 3 * 32 * 32``; the data-consistency step is inverted exactly through
``G``'s SVD), :class:`invprox.solvers.FlowProxSolver` starts from the pre-trained Glow
(``benchmarks/results/glow_celeba32.pt``, 32x32 RGB CelebA faces) and is fine-tuned end to end, then compared
with the back-projection ``A^T y`` and the classical reference (:func:`invprox.solvers.classical_reference`:
TV-regularised proximal gradient). The measurement is a vector ``(B, m)``, not an image: nothing in the
solver assumes image-shaped measurements.

Run::

    python examples/compressed_sensing.py           # ratio 0.25, K = 4, 30 steps of batch 8: minutes on CPU
    python examples/compressed_sensing.py --tiny    # seconds (ratio 0.1)

Prints the training loss and the mean PSNR on validation faces of ``A^T y``, the classical reference, and
the solver calibrated (untrained) and after fine-tuning; writes ``grid.png`` and ``metrics.json`` to
``runs/examples/compressed_sensing`` (``--out``).

Measured with the defaults (768 of 3072 measurements, sigma 0.01, 8 faces, about 2 minutes on a busy
2-core CPU): ``A^T y`` 7.03 dB, TV (30 iterations) 8.96 dB, flow prox untrained 10.35 dB (two images
NaN: the pre-trained Glow's inverse overflows on some inputs far from its training faces, see
``_common.py``), fine-tuned 13.74 dB. Thirty steps are a demonstration; the seed paper fine-tunes for
many epochs.
"""

from __future__ import annotations

from invprox.physics import make_physics

from _common import face_task, solve_face_task

REAL = dict(steps=30, batch=8, K=4, n_val=8, n_train=512, sigma=0.01, ratio=0.25, lr_net=1e-4,
            lr_step=5e-2, mu_init=0.5, lam_init=0.1)
TINY = dict(steps=1, batch=2, K=1, n_val=2, n_train=4, ratio=0.1)


def main(argv=None) -> dict:
    args, out, glow, x_train, x_val = face_task(__doc__, "compressed_sensing", REAL, TINY, argv)

    op = make_physics("compressed_sensing", (3, 32, 32), ratio=args.ratio, seed=args.seed)  # fixed matrix
    print(f"{op.m} measurements of {op.n} pixels, ||A||^2 = {op.norm_sq():.2f}")

    def measure(x, g):
        return op.measure(x, args.sigma, g), op

    return solve_face_task(args, out, glow, x_train, x_val, "compressed_sensing", measure,
                           {"ratio": args.ratio, "m": op.m})


if __name__ == "__main__":
    main()
