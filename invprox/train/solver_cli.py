"""The ``invprox train`` subcommand: the command line of :func:`invprox.train.solver_train.train_solver`."""

from __future__ import annotations

import argparse
import sys
from typing import Union

from ..checkpoint import CheckpointError
from .solver_setup import PROX_KINDS
from .solver_train import NonFiniteLossError, train_solver

__all__ = ["add_parser"]


def _keep_every(text: str) -> Union[int, str, None]:
    if text in ("fold", "none"):
        return None if text == "none" else text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, 'fold' or 'none', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, 'fold' or 'none', got {text!r}")
    return n


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``invprox train``."""
    p = subparsers.add_parser(
        "train", help="train an unrolled solver (flow, ResNet or U-Net prox) end to end",
        description=_solver_train_doc(), formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--task", default="denoising", help="denoising, inpainting, deblurring, superresolution, "
      "compressed_sensing")
    a("--p-missing", type=float, default=0.5, help="inpainting: fraction of missing pixels")
    a("--kernel", default="gaussian", choices=("gaussian", "motion"), help="deblurring kernel")
    a("--blur-std", type=float, default=2.0, help="deblurring: std of the Gaussian kernel")
    a("--factor", type=int, default=2, help="super-resolution factor")
    a("--cs-ratio", type=float, default=0.25, help="compressed sensing: measurements / pixels")
    a("--prox", default="flow", choices=PROX_KINDS)
    a("--K", type=int, default=4, help="number of folds")
    a("--sigma", type=float, default=0.2, help="noise std (images in [0, 1])")
    a("--data", default="embedded", help="'embedded', an image folder, or a shared data set (celeba64)")
    a("--val-data", default=None, help="validation data (default: the 'val' split of --data); 'holdout': "
      "the last --n-val images of the train split")
    a("--size", type=int, default=64, help="image side")
    a("--channels", type=int, default=3, choices=(1, 3))
    a("--flow", default=None, help="pre-trained Glow (flow.pt of `invprox pretrain`); needed for --prox flow")
    a("--tied", action="store_true", help="flow: one flow shared by all folds")
    a("--shrinkage", default=None, choices=("gaussian", "laplace"), help="flow: latent prox (default: prior)")
    a("--mu-init", type=float, default=0.5, help="initial step mu_k as a fraction of 1/||A||^2")
    a("--lam-init", type=float, default=0.1, help="flow: initial latent shrinkage lambda_k")
    a("--lam-per", default="level", choices=("level", "scalar"),
      help="flow: one lambda per multi-scale latent level, or one per fold (the paper's)")
    a("--start", default="smooth", choices=("smooth", "paper"),
      help="x_0: smoothness-regularised least squares from y, or the paper's (flow: g(0); CNNs: A^T y)")
    a("--calibrate", type=int, default=32, metavar="N",
      help="set the start (and for the flow mu_k, lambda_k) from N training pairs before training; 0: off")
    a("--clip-grad", type=float, default=1.0, help="clip the gradient's global norm (0: off)")
    a("--keep-every", type=_keep_every, default="fold", metavar="N|fold|none",
      help="flow engine drift policy: keep every N-th block's input, 'fold' (default: each fold's "
           "input, one image per fold) or 'none' (pure inversion)")
    a("--standard-autograd", action="store_true", help="flow: plain autograd instead of the engine")
    a("--checkpoint-folds", action="store_true", help="baselines: torch.utils.checkpoint per fold")
    a("--features", type=int, default=None, help="baselines: feature maps (default: the factory's)")
    a("--n-blocks", type=int, default=None, help="resnet: residual blocks")
    a("--depth", type=int, default=None, help="unet: levels")
    a("--lr-net", type=float, default=1e-5, help="learning rate of the networks (paper: 1e-5)")
    a("--lr-step", type=float, default=1e-2, help="learning rate of mu_k, lambda_k (paper: 1e-2)")
    a("--batch", type=int, default=8)
    a("--epochs", type=int, default=100)
    a("--max-steps", type=int, default=None, help="stop after this many steps in total")
    a("--budget-minutes", type=float, default=None,
      help="stop after this many minutes of --budget-clock time in training steps (equal per solver)")
    a("--budget-clock", default="cpu", choices=("cpu", "wall"),
      help="what the budget counts: the process's CPU time (fair on a shared CPU) or wall time (GPU)")
    a("--val-every", type=int, default=None, help="validate every n steps (default: each epoch)")
    a("--patience", type=int, default=5, help="early stopping: validations without improvement (0: off)")
    a("--n-train", type=int, default=None, help="use at most this many training images")
    a("--n-val", type=int, default=64, help="use at most this many validation images")
    a("--seed", type=int, default=0)
    a("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    a("--out", default="runs/solver", help="output folder")
    a("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    a("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    kw = {k: v for k, v in vars(args).items() if k not in ("func", "command", "no_progress")}
    try:
        train_solver(progress=not args.no_progress, **kw)
    except (NonFiniteLossError, CheckpointError) as err:
        print(f"invprox train: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, NonFiniteLossError) else 2
    return 0


def _solver_train_doc() -> str:
    from . import solver_train

    return (solver_train.__doc__ or "").split("\n\n")[0]


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
