"""Knowledge distillation (Hinton et al., 2015): the student also matches the softened predictions of a trained
full network. Joint BlockDrop finetuning uses it on every sampled mask (without it the joint stage trades the
backbone's all-blocks accuracy away: 90.2 % -> 88.8 % for the shipped ResNet-32); the supervised loop uses it to
fine-tune a pruned network toward the unpruned one, or to train a Big-Little net against a ResNet."""

from __future__ import annotations

import argparse
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from models import load_artifact
from models.artifacts import InputSpec


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) on temperature-softened distributions, times T^2 so that its gradients keep the
    scale of a cross-entropy's whatever the temperature."""
    student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def supervised_loss(
    logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, weight: float, temperature: float
) -> Tensor:
    """Cross-entropy, blended with the distillation term when a teacher is given: (1 - w) CE + w KD."""
    cross_entropy = F.cross_entropy(logits, labels)
    if teacher_logits is None or weight == 0:
        return cross_entropy
    return (1 - weight) * cross_entropy + weight * distillation_loss(logits, teacher_logits, temperature)


def load_teacher(path: str, expected_input: InputSpec, expected_classes: list[str] | tuple[str, ...]) -> nn.Module:
    """The full network of artifact ``path``, frozen; it must read the same input and predict the same classes."""
    teacher = load_artifact(path)
    if teacher.manifest.input != expected_input or list(teacher.manifest.classes) != list(expected_classes):
        raise ValueError(f"{path}: the teacher must take the same input and predict the same classes as the model")
    network = getattr(teacher, "backbone", teacher)  # a BlockDrop or ResNet artifact's full backbone, or a bL-ResNet
    return network.eval().requires_grad_(False)


def distill_settings(args: argparse.Namespace) -> dict[str, float]:
    """The training config's ``distill_weight`` / ``distill_temperature`` from ``--distill-*`` (weight 0 without
    a teacher); nothing for a command without those options, so that the config's defaults hold."""
    if not hasattr(args, "distill_from"):
        return {}
    weight = args.distill_weight if args.distill_from else 0.0
    return {"distill_weight": weight, "distill_temperature": args.distill_temperature}


def distillation_record(args: argparse.Namespace) -> dict[str, Any]:
    """The manifest's ``training.distillation`` entry, or nothing when the run had no teacher."""
    if not getattr(args, "distill_from", None):
        return {}
    teacher = {"teacher": args.distill_from, "weight": args.distill_weight, "temperature": args.distill_temperature}
    return {"distillation": teacher}
