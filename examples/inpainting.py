"""Inpainting faces with the unrolled flow-prox solver: a new random mask for every image.

What it shows: :class:`invprox.physics.Inpainting` with per-image masks ``(B, 1, H, W)`` from
:func:`invprox.physics.random_mask`, passed to :class:`invprox.solvers.FlowProxSolver` with every call
(``solver(y, op)``, as deepinv's reconstructors take it: the solver keeps no per-call operator); the
solver starts from the pre-trained
Glow (``benchmarks/results/glow_celeba32.pt``, 32x32 RGB CelebA faces) and is fine-tuned end to end, then
compared with the back-projection ``A^T y`` (the masked image) and the classical reference
(:func:`invprox.solvers.classical_reference`: biharmonic inpainting, then TV denoising).

Run::

    python examples/inpainting.py               # K = 4, 30 steps of batch 8: a few minutes on CPU
    python examples/inpainting.py --tiny        # seconds

Prints the training loss and the mean PSNR on validation faces of ``A^T y``, the classical reference, and
the solver calibrated (untrained) and after fine-tuning; writes ``grid.png`` and ``metrics.json`` to
``runs/examples/inpainting`` (``--out``). ``--p-missing`` sets the fraction of missing pixels.

Measured with the defaults (half the pixels missing, sigma 0.02, 8 faces, about 2 minutes on a busy
2-core CPU): ``A^T y`` 9.20 dB, biharmonic+TV 25.20 dB, flow prox untrained 13.16 dB, fine-tuned 17.91 dB.
A few steps are skipped on the way (non-finite loss: the pre-trained Glow's inverse overflows on some
inputs far from its training faces, see ``_common.py``). Thirty steps are a demonstration; the seed
paper fine-tunes for many epochs.
"""

from __future__ import annotations

from invprox.physics import Inpainting, random_mask

from _common import face_task, solve_face_task

REAL = dict(steps=30, batch=8, K=4, n_val=8, n_train=512, sigma=0.02, p_missing=0.5, lr_net=1e-4,
            lr_step=5e-2, mu_init=0.5, lam_init=0.1)
TINY = dict(steps=1, batch=2, K=1, n_val=2, n_train=4)


def main(argv=None) -> dict:
    args, out, glow, x_train, x_val = face_task(__doc__, "inpainting", REAL, TINY, argv)

    def measure(x, g):  # every image its own mask: 1 = observed, 0 = missing
        op = Inpainting(random_mask((len(x), 1, 32, 32), args.p_missing, generator=g))
        return op.measure(x, args.sigma, g), op

    return solve_face_task(args, out, glow, x_train, x_val, "inpainting", measure,
                           {"p_missing": args.p_missing})


if __name__ == "__main__":
    main()
