"""``blockdrop bench executor``: benchmarks live in ``bench/`` and write their tables to ``bench/results/``."""

from __future__ import annotations

import argparse

from cli.help_format import DefaultsInHelp


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    from bench import executor, load, soak, variants

    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    benches = parser.add_subparsers(dest="which", metavar="WHICH", required=True)
    for which, module in (("executor", executor), ("variants", variants), ("load", load), ("soak", soak)):
        bench_parser = benches.add_parser(which, help=module.__doc__.split("\n\n")[0], formatter_class=DefaultsInHelp)
        module.add_arguments(bench_parser)
        bench_parser.set_defaults(handler=module.execute)
