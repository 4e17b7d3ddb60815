"""The ``blockdrop`` command. Each package registers its own subcommands and is imported only when used,
so ``blockdrop serve`` never loads the training code and vice versa."""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys

# subcommand -> (module with ``register(subparsers)``, one-line help)
_COMMANDS = {
    "serve": ("cli.serve", "run the inference service"),
    "train": ("cli.train", "train backbones, policies and the static variants"),
    "eval": ("cli.eval", "evaluate an artifact on CIFAR (the paper's Table 1)"),
    "calibrate": ("cli.calibrate", "record a BlockDrop artifact's accuracy / FLOPs curve on validation"),
    "record-masks": ("cli.record_masks", "record a BlockDrop artifact's most frequent masks for the GPU engine"),
    "bench": ("cli.bench", "benchmark the executor and every variant"),
    "import-official": ("cli.import_official", "convert an original BlockDrop checkpoint into an artifact"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blockdrop", description="Dynamic-inference ResNets: train, evaluate, serve.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in _COMMANDS.items():
        if name == chosen:
            importlib.import_module(module).register(subparsers, name, help_text)
        else:
            subparsers.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    args.command_line = "blockdrop " + shlex.join(argv)  # recorded in artifacts' provenance
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"blockdrop {args.command}: error: {plainly(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: said in a line, not a traceback; a run folder keeps its finished epochs
        run_dir = getattr(args, "run_dir", None)
        again = f"; the same command resumes {run_dir} after its last finished epoch" if run_dir else ""
        print(f"\nblockdrop {args.command}: interrupted{again}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`blockdrop eval --json | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error as Python flushes stdout
        return 141


def plainly(error: Exception) -> str:
    """The error in one line; pydantic's validation errors (settings, a manifest) as ``field: what is wrong (got
    what was given)`` for each, without pydantic's types and links."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):
        return str(error)
    problems = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"])  # none: the whole, a rule across fields
        said = problem["msg"].removeprefix("Value error, ")
        said = f"{where}: {said}" if where else said
        if where and problem["type"] != "missing":
            given = repr(problem.get("input"))
            said += f" (got {given if len(given) <= 60 else given[:57] + '...'})"
        problems.append(said)
    what = "settings" if error.title == "Settings" else error.title
    return f"invalid {what}: " + "; ".join(problems)


if __name__ == "__main__":
    sys.exit(main())
