"""The ``invprox train`` subcommand: the command line of :func:`invprox.train.solver_train.train_solver`."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..checkpoint import CheckpointError
from .config import TrainConfig, add_arguments
from .solver_train import NonFiniteLossError, run_training

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``invprox train``: one option per field of :class:`~invprox.train.config.TrainConfig`."""
    from ..cli import DefaultsHelpFormatter

    p = subparsers.add_parser(
        "train", help="train an unrolled solver (flow, ResNet or U-Net prox) end to end",
        description=_solver_train_doc(), formatter_class=DefaultsHelpFormatter,
    )
    add_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    try:
        run_training(config, progress=not args.no_progress)
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
