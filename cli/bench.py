"""``blockdrop bench WHICH``: the benchmarks live in ``bench/`` and write their tables to ``bench/results/`` (the
results page to ``docs/results.md``)."""

from __future__ import annotations

import argparse
import importlib

from cli.help_format import DefaultsInHelp

BENCHMARKS = {
    "executor": "bench.executor",
    "engine": "bench.engine",
    "compiled": "bench.compiled",
    "gpu": "bench.gpu",
    "signatures": "bench.signatures",
    "variants": "bench.variants",
    "load": "bench.load",
    "soak": "bench.soak",
    "efficiency": "bench.efficiency",
    "protocols": "bench.protocols",
    "overload": "bench.overload",
    "hostile": "bench.hostile",
    "startup": "bench.startup",
    "ray": "bench.ray_serve",
    "results": "bench.results_table",
    "calibration-plot": "bench.calibration_plot",
    "ab-simulation": "bench.ab_simulation",
}


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    benches = parser.add_subparsers(dest="which", metavar="WHICH", required=True)
    for which, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        summary = module.__doc__.split("\n\n")[0]
        bench_parser = benches.add_parser(which, help=summary, description=summary, formatter_class=DefaultsInHelp)
        module.add_arguments(bench_parser)
        bench_parser.set_defaults(handler=module.execute)
