"""The compute dial drawn: each BlockDrop artifact's calibrated accuracy against its mean FLOPs (fraction of the
full network's, the policy included) over the threshold grid, measured on validation by ``blockdrop calibrate``,
with the shipped operating point (the artifact's default threshold) marked. Written to ``docs/calibration.svg``:

    blockdrop bench calibration-plot
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.variants import CHECKPOINTS
from models.artifacts import read_manifest

PLOT = Path(__file__).resolve().parent.parent / "docs" / "calibration.svg"


def curves(checkpoints: Path) -> dict[str, tuple[list[dict], float | None]]:
    """Artifact name -> (calibrated points, default threshold), for every artifact that carries a curve."""
    found = {}
    for folder in sorted(checkpoints.iterdir()):
        if not (folder / "manifest.json").exists():
            continue
        manifest = read_manifest(folder)
        points = manifest.calibration.get("points")
        if points:
            found[manifest.name] = (points, manifest.defaults.get("threshold"))
    return found


def draw(found: dict[str, tuple[list[dict], float | None]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "blockdrop"  # the same curves give the same file
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, and searchable
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, (points, default) in found.items():
        x = [p["flops_fraction"] * 100 for p in points]
        y = [p["accuracy"] * 100 for p in points]
        (line,) = axes.plot(x, y, marker=".", label=name)
        shipped = [p for p in points if default is not None and abs(p["threshold"] - default) < 1e-9]
        for p in shipped:
            axes.plot(p["flops_fraction"] * 100, p["accuracy"] * 100, marker="*", markersize=14, color=line.get_color())
            axes.annotate(
                f"shipped: threshold {default:g}",
                (p["flops_fraction"] * 100, p["accuracy"] * 100),
                textcoords="offset points",
                xytext=(8, -14),
                fontsize=8,
            )
    axes.set_xlabel("mean FLOPs, % of the variant's full network (policy included)")
    axes.set_ylabel("validation accuracy, %")
    axes.set_title("The compute dial: accuracy against compute over the policy threshold")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, format="svg", metadata={"Date": None})
    plt.close(figure)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", default=str(CHECKPOINTS), help="folder of artifacts")
    parser.add_argument("--out", default=str(PLOT), help="SVG file to write")


def execute(args: argparse.Namespace) -> int:
    found = curves(Path(args.checkpoints))
    if not found:
        raise ValueError(f"no artifact under {args.checkpoints} carries a calibration curve (blockdrop calibrate)")
    draw(found, Path(args.out))
    print(f"wrote {args.out}: {', '.join(found)}")
    return 0
