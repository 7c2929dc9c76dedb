"""The `robeflow` command: one subcommand per pipeline step, plus serve, pipeline, summary.

Each module in ``components/`` (the steps) and each of :data:`COMMANDS` defines
``register(subparsers)``; a handler returns the process exit code. Errors a user can cause (``ValueError``,
``FileNotFoundError``, :class:`contract.io.StepError`) become one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import components

# Commands that are not pipeline steps: the model server, the Kubeflow pipeline's
# compile/submit/schedule/run-local, and the summary of a local run.
COMMANDS: tuple[str, ...] = ("serving.cli", "pipelines.commands", "pipelines.summary")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robeflow",
        description="Train ROBE-compressed DLRM recommenders from shop transaction logs and ship them to serving.",
    )
    sub = parser.add_subparsers(dest="step", metavar="STEP")
    sub.required = True
    steps = [f"components.{m.name}" for m in pkgutil.iter_modules(components.__path__)
             if not m.name.startswith("_")]
    for name in sorted(steps + list(COMMANDS), key=lambda n: n.rsplit(".", 1)[1]):
        register = getattr(importlib.import_module(name), "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from contract.io import StepError

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
