"""The ``invprox`` command line: one subcommand per job, each defined in its own module.

Each module in :data:`SUBCOMMANDS` provides ``add_parser(subparsers)`` (which registers its parser and sets
``func``) and is imported only when the command line is built, so ``import invprox`` stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

__all__ = ["main", "build_parser", "pick_threads", "DefaultsHelpFormatter"]


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in the help, except where an option's help already says its default (its
    ``None`` stands for what the help describes, e.g. "default: the flow's prior")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "default:" in text else super()._get_help_string(action)

#: Modules that define subcommands, in the order ``invprox --help`` lists them.
SUBCOMMANDS = (
    "invprox.train.demo",
    "invprox.train.pretrain",
    "invprox.train.solver_cli",
    "invprox.train.evaluate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="invprox",
        description=(
            "Memory-efficient invertible backprop and unrolled inverse-problem solvers with "
            "normalizing-flow priors."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def pick_threads(requested: Optional[int] = None) -> int:
    """Torch CPU threads for a job: ``requested``, else ``OMP_NUM_THREADS``, else the idle CPUs.

    The idle CPUs are the CPUs this process may use minus the 1-minute load average (at least one):
    torch's threads spin against each other when another process holds a core, so on a 2-core machine
    with one core busy one thread is much faster than two.
    """
    if requested:
        return int(requested)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cpus, int(cpus - load + 0.5)))


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    import torch

    threads = pick_threads(getattr(args, "threads", None))
    torch.set_num_threads(threads)
    print(f"invprox {args.command}: {threads} torch thread(s)", file=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as e:
        print(f"invprox {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
