"""The package boundaries DESIGN.md draws, checked on the source: the command line belongs to ``cli/``, the
flow is one-way (``models`` below ``training`` and ``service``, which never import each other), and library
code raises exceptions instead of exiting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("models", "training", "service", "bench")
# package -> top-level packages it must not import
FORBIDDEN = {
    "models": {"cli", "training", "service", "bench"},
    "training": {"cli", "service", "bench"},
    "service": {"cli", "training", "bench"},
    "bench": {"cli"},
}


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported_packages(tree: ast.AST) -> set[str]:
    """Top-level names of every module the tree imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _is_main_guard(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def exits(tree: ast.Module) -> list[int]:
    """Lines that raise ``SystemExit`` or call ``sys.exit``/``exit``/``quit``, outside a ``__main__`` guard."""
    lines = []
    bodies = [node for node in tree.body if not _is_main_guard(node)]
    for node in (inner for top in bodies for inner in ast.walk(top)):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id == "SystemExit":
                lines.append(node.lineno)
        elif isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr == "exit" and getattr(func.value, "id", "") == "sys") or (
                isinstance(func, ast.Name) and func.id in ("exit", "quit")
            ):
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("package", LIBRARIES)
def test_library_packages_keep_to_the_one_way_flow(package):
    crossings = {
        str(path.relative_to(ROOT)): sorted(imported_packages(ast.parse(path.read_text())) & FORBIDDEN[package])
        for path in _sources(package)
    }
    assert {path: names for path, names in crossings.items() if names} == {}


@pytest.mark.parametrize("package", LIBRARIES)
def test_library_code_raises_instead_of_exiting(package):
    found = {str(path.relative_to(ROOT)): exits(ast.parse(path.read_text())) for path in _sources(package)}
    assert {path: lines for path, lines in found.items() if lines} == {}


def test_the_checks_catch_what_they_look_for():
    """Both checks fail on code that does what they forbid (so an empty result means something)."""
    bad = ast.parse(
        "import sys\nfrom cli.main import main\ndef f():\n    import training.loop\n    raise SystemExit('no')\n"
        "def g():\n    sys.exit(2)\nif __name__ == '__main__':\n    raise SystemExit(main())\n"
    )
    assert imported_packages(bad) >= {"cli", "training"}
    assert exits(bad) == [5, 7]


def test_the_command_line_loads_only_the_subcommand_it_runs():
    """``blockdrop --help`` imports no library; ``blockdrop serve --help`` never loads the training code."""
    import subprocess
    import sys

    probe = (
        "import sys; from cli.main import build_parser; build_parser(sys.argv[1:]); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'models', 'training', 'service', 'bench'}))"
    )

    def loaded(*argv: str) -> str:
        return subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=ROOT).stdout

    assert loaded().strip() == "[]"
    assert "training" not in loaded("serve") and "service" not in loaded("train")
