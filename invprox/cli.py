"""The ``invprox`` command line: one subcommand per job, each defined in its own module.

Each module in :data:`SUBCOMMANDS` provides ``add_parser(subparsers)`` (which registers its parser and sets
``func``) and is imported only when the command line is built, so ``import invprox`` stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

__all__ = ["main", "build_parser"]

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


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
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
