"""The results table of ``docs/results.md``, rendered from the shipped artifacts' manifests (nothing typed by hand).

Each row's figures are the test-set figures that ``blockdrop eval ARTIFACT --split test --record`` stored in the
manifest; the training time and command come from the manifest's provenance.

    blockdrop bench results        # writes docs/results.md
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.variants import CHECKPOINTS
from models.artifacts import Manifest, read_manifest

RESULTS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "results.md"
HEADER = (
    "# Results\n\n"
    "Generated from the manifests under `models/checkpoints/` by `blockdrop bench results`; do not edit by hand "
    "(the test suite regenerates it and compares).\n\n"
)

ORDER = (
    "cifar10-resnet32",
    "cifar10-resnet32-e200",
    "cifar10-resnet32-blockdrop",
    "cifar10-resnet32-slim",
    "cifar10-resnet32-slim60",
    "cifar10-resnet32-slim-blockdrop",
    "cifar10-blresnet",
    "cifar10-blresnet62",
    "cifar10-resnet62",
    "cifar10-resnet62-kd",
    "cifar10-resnet110",
    "cifar10-resnet110-blockdrop",
)
ROW_LABELS = {"full": "full network", "first_k": "FirstK", "random_k": "RandomK", "blockdrop": "BlockDrop"}


def parameter_count(folder: Path) -> int:
    from safetensors.torch import load_file

    weights = load_file(folder / "model.safetensors")
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    return sum(tensor.numel() for key, tensor in weights.items() if not key.endswith(statistics))


def _unshipped_backbone(folder: Path, training: dict[str, Any]) -> str:
    """How the backbone a BlockDrop model started from was trained, when that backbone is not shipped beside it.
    The record naming it is the model's own, or an earlier stage's (a model adapted after its finetuning)."""
    record = training
    while record and "backbone_training" not in record:
        record = record.get("earlier")
    if not record or (folder.parent / record["started_from"]).exists():
        return ""
    backbone = record["backbone_training"]
    hours = backbone.get("train_seconds", 0) / 3600
    command = backbone.get("command", "?")
    which = "its backbone" if record is training else f"its backbone `{record['started_from']}`"
    return f"; {which}: {hours:.2f} h over `{command}`{_earlier_commands(backbone)}"


def _earlier_commands(training: dict[str, Any]) -> str:
    """The commands of the earlier versions a run went on from, newest first (their time counts in the total)."""
    text, earlier = "", training.get("earlier")
    while earlier:
        text += f", after `{earlier.get('command', '?')}`"
        earlier = earlier.get("earlier")
    return text


def rows_for(folder: Path, reference_flops: float) -> list[str]:
    manifest = read_manifest(folder)
    test: dict[str, Any] | None = manifest.metrics.get("test")
    if not test:
        return [f"| {folder.name} | (no test figures recorded yet) | | | | | | |"]
    training = manifest.training
    hours = training.get("train_seconds", 0) / 3600
    provenance = f"{hours:.2f} h; `{training.get('command', '?')}`{_earlier_commands(training)}"
    if training.get("started_from") and training["started_from"] != folder.name:
        provenance += f" (from `{training['started_from']}`{_unshipped_backbone(folder, training)})"
    params = parameter_count(folder)
    lines = []
    for key, row in test["rows"].items():
        if key == "full" and manifest.kind == "blockdrop":
            label = "full network (finetuned backbone)"
        elif key == "full" and "slimming" in training:
            label = f"{training['slimming']['inner_channels_removed']:.0%} of inner channels pruned"
        elif key == "full" and manifest.kind == "biglittle":
            config = manifest.architecture["biglittle"]
            label = f"bL-ResNet, α={config['alpha']}, β={config['beta']}"
            if config.get("plain_stages"):
                label += ", last stage plain"
        else:
            label = ROW_LABELS[key] + (f" K={test['k']}" if key in ("first_k", "random_k") else "")
            label += f" (threshold {test['threshold']:g})" if key == "blockdrop" else ""
        lines.append(
            f"| {folder.name} | {label} | {row['accuracy'] * 100:.2f}% | {row['blocks_mean']:.2f} ± "
            f"{row['blocks_std']:.2f} | {row['flops_mean']:.3g} | {row['flops_mean'] / reference_flops * 100:.1f}% | "
            f"{params / 1e6:.3f} M | {provenance if key in ('full', 'blockdrop') else ''} |"
        )
    return lines


def render(checkpoints: Path) -> str:
    reference = read_manifest(checkpoints / ORDER[0]).flops["full"]
    lines = [
        "CIFAR-10 test set, 10,000 images. FLOPs: 2 per multiply-add, convolutions and linear layers, the policy "
        f"included for BlockDrop rows; '% of R32' is against the full ResNet-32's {reference:.3g}. Parameters "
        "exclude BatchNorm running statistics.",
        "",
        "| artifact | row | accuracy | blocks used | FLOPs / image | % of R32 | params | training time; command |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in ORDER:
        if (checkpoints / name / "manifest.json").exists():
            lines += rows_for(checkpoints / name, reference)
    lines += same_depth_notes(checkpoints)
    return "\n".join(lines) + "\n"


def same_depth_notes(checkpoints: Path) -> list[str]:
    """For each Big-Little artifact: the FLOPs of the plain CIFAR ResNet as deep as its big branch path, and its
    accuracy against each shipped plain ResNet of that depth."""
    from models.flops import measure_flops
    from models.resnet import FlatResNet, ResNetConfig

    notes = []
    for name in ORDER:
        folder = checkpoints / name
        if not (folder / "manifest.json").exists():
            continue
        manifest = read_manifest(folder)
        if manifest.kind != "biglittle":
            continue
        blocks = manifest.architecture["biglittle"]["blocks_per_stage"]
        depth = 2 * sum(blocks) + 2  # K blocks per stage on the big path (K - 1 big + the fusion block)
        plain = measure_flops(FlatResNet(ResNetConfig("cifar", depth, len(manifest.classes))), manifest.input.size)
        notes.append(
            f"\n{name} has {blocks} blocks per stage, as deep as a ResNet-{depth}; the plain ResNet-{depth} costs "
            f"{plain.full:.3g} FLOPs by the same counter, so it uses {manifest.flops['full'] / plain.full:.1%} of "
            "that."
            + "".join(_against_plain(manifest, plain_resnet) for plain_resnet in _plain_resnets(checkpoints, depth))
        )
    return notes


def _plain_resnets(checkpoints: Path, depth: int) -> list[Manifest]:
    """The manifests of the shipped unpruned ResNets of ``depth``, in ORDER."""
    found = []
    for name in ORDER:
        if not (checkpoints / name / "manifest.json").exists():
            continue
        manifest = read_manifest(checkpoints / name)
        backbone = manifest.architecture.get("backbone") or {}
        if manifest.kind == "resnet" and backbone.get("depth") == depth and not backbone.get("inner_widths"):
            found.append(manifest)
    return found


def _against_plain(biglittle: Manifest, plain: Manifest) -> str:
    """One sentence: the Big-Little net's test accuracy against the plain ResNet's."""
    mine = biglittle.metrics.get("test", {}).get("rows", {}).get("full")
    theirs = plain.metrics.get("test", {}).get("rows", {}).get("full")
    if not mine or not theirs:
        return ""
    gap = (mine["accuracy"] - theirs["accuracy"]) * 100
    return (
        f" Against `{plain.name}` ({theirs['accuracy']:.2%}, {plain.training.get('epochs', '?')} epochs): "
        f"{gap:+.2f} points at {biglittle.flops['full'] / plain.flops['full']:.1%} of its FLOPs."
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", default=str(CHECKPOINTS), help="folder of artifacts")
    parser.add_argument("--out", default=str(RESULTS_PAGE), help="Markdown file to write")


def page(checkpoints: Path) -> str:
    """The whole Markdown page: the header that says where it comes from, then the table."""
    return HEADER + render(checkpoints)


def execute(args: argparse.Namespace) -> int:
    text = page(Path(args.checkpoints))
    Path(args.out).write_text(text)
    print(text)
    return 0
