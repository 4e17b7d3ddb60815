"""``blockdrop bench executor``: benchmarks live in ``bench/`` and write their tables to ``bench/results/``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    from bench import executor, load, soak, variants

    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    benches = parser.add_subparsers(dest="which", metavar="WHICH", required=True)
    executor_parser = benches.add_parser("executor", help=executor.__doc__.split("\n\n")[0])
    executor.add_arguments(executor_parser)
    executor_parser.set_defaults(handler=executor.execute)
    variants_parser = benches.add_parser("variants", help=variants.__doc__.split("\n\n")[0])
    variants.add_arguments(variants_parser)
    variants_parser.set_defaults(handler=variants.execute)
    load_parser = benches.add_parser("load", help=load.__doc__.split("\n\n")[0])
    load.add_arguments(load_parser)
    load_parser.set_defaults(handler=load.execute)
    soak_parser = benches.add_parser("soak", help=soak.__doc__.split("\n\n")[0])
    soak.add_arguments(soak_parser)
    soak_parser.set_defaults(handler=soak.execute)
