"""The `robeflow` command: one subcommand per pipeline step.

Each module in ``components/`` that defines ``register(subparsers)`` adds its step; the
step's handler returns the process exit code. Errors a user can cause (``ValueError``,
``FileNotFoundError``, :class:`components.common.StepError`) become one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import components


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robeflow",
        description="Train ROBE-compressed DLRM recommenders from shop transaction logs and ship them to serving.",
    )
    sub = parser.add_subparsers(dest="step", metavar="STEP")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(components.__path__), key=lambda m: m.name):
        # kfp_components imports kfp at import time; the CLI never needs it to start.
        if info.name.startswith("_") or info.name in ("cli", "kfp_components"):
            continue
        module = importlib.import_module(f"components.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from components.common import StepError

    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (StepError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"robeflow {args.step}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"robeflow {args.step}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
