"""Refuse to run when a Ray ``working_dir`` (or anything else early on ``sys.path``) shadows this project's
top-level packages: they have plain names (``models``, ``service``, ``training``, ``cli``), and a user's own
``models`` module first on the path would be imported in their place, failing later and obscurely."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGES = ("cli", "models", "service", "training", "bench")
ROOT = Path(__file__).resolve().parents[2]


def shadowed_packages(root: Path = ROOT) -> dict[str, str]:
    """The project's packages that import from somewhere other than ``root``, with where they come from."""
    found = {}
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if origin is None or origin.parent.parent != root.resolve():
            found[name] = str(origin) if origin else "nowhere"
    return found


def check_packages(root: Path = ROOT) -> None:
    shadowed = shadowed_packages(root)
    if shadowed:
        where = ", ".join(f"{name} from {origin}" for name, origin in shadowed.items())
        raise RuntimeError(
            f"the blockdrop packages are shadowed ({where}; expected under {root}): install the project on every "
            "node (pip install '.[ray]') and deploy without a runtime_env working_dir that has modules of these names"
        )
