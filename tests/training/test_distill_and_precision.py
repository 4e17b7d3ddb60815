"""Distillation loss on hand-made logits; the bf16 default follows the hardware."""

import math

import pytest
import torch
import torch.nn.functional as F

from training import loop
from training.distill import distillation_loss, supervised_loss


def test_distillation_is_zero_when_student_matches_teacher_and_scaled_by_t_squared():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    assert distillation_loss(logits, logits, temperature=4.0).item() == pytest.approx(0.0, abs=1e-7)

    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax at T=1: (0.75, 0.25)
    expected_kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert distillation_loss(student, teacher, temperature=1.0).item() == pytest.approx(expected_kl, rel=1e-5)
    # at T=2 the teacher softens to softmax(log(3)/2, 0) = (sqrt3, 1)/(sqrt3 + 1), and the KL is scaled by 4
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl_t2 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert distillation_loss(student, teacher, temperature=2.0).item() == pytest.approx(4 * kl_t2, rel=1e-5)


def test_supervised_loss_blends_cross_entropy_and_distillation():
    torch.manual_seed(0)
    logits, teacher = torch.randn(8, 10), torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    ce = F.cross_entropy(logits, labels)
    assert torch.equal(supervised_loss(logits, labels, None, 0.5, 4.0), ce)
    assert torch.equal(supervised_loss(logits, labels, teacher, 0.0, 4.0), ce)
    blended = 0.7 * ce + 0.3 * distillation_loss(logits, teacher, 4.0)
    assert torch.allclose(supervised_loss(logits, labels, teacher, 0.3, 4.0), blended)


def test_teacher_gets_no_gradient():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    distillation_loss(student, teacher, 4.0).backward()
    assert student.grad is not None and teacher.grad is None


def test_bf16_default_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(loop, "native_bf16", lambda: False)
    assert loop.resolve_bf16(None) is False and loop.resolve_bf16(True) is True
    monkeypatch.setattr(loop, "native_bf16", lambda: True)
    assert loop.resolve_bf16(None) is True and loop.resolve_bf16(False) is False


def _tiny_fit(tmp_path, name: str, teacher, weight: float) -> dict[str, torch.Tensor]:
    from models.resnet import FlatResNet, ResNetConfig
    from training.checkpoint import RunFolder
    from training.data import ImageSet, Normalizer

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=generator)
    data = ImageSet(images, torch.randint(0, 10, (96,), generator=generator), tuple("abcdefghij"))
    torch.manual_seed(1)
    student = FlatResNet(ResNetConfig("cifar", 8, 10))
    config = loop.FitConfig(epochs=1, batch_size=16, lr=0.05, bf16=False, distill_weight=weight)
    loop.fit(student, data, data, Normalizer(None, None), config, RunFolder(tmp_path / name), teacher=teacher)
    return student.state_dict()


def test_the_supervised_loop_learns_from_a_teacher_only_when_weighted(tmp_path):
    from models.resnet import FlatResNet, ResNetConfig

    torch.manual_seed(2)
    teacher = FlatResNet(ResNetConfig("cifar", 8, 10))  # left in train mode: fit must freeze it itself
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    alone = _tiny_fit(tmp_path, "alone", None, 0.0)
    weightless = _tiny_fit(tmp_path, "weightless", teacher, 0.0)
    taught = _tiny_fit(tmp_path, "taught", teacher, 0.5)
    assert all(torch.equal(alone[k], weightless[k]) for k in alone)  # a teacher at weight 0 changes nothing
    assert any(not torch.equal(alone[k], taught[k]) for k in alone if k.endswith("weight"))
    # the teacher stays put, BatchNorm running statistics included
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())


def test_a_teacher_with_other_classes_or_input_is_refused(tmp_path):
    from models.artifacts import InputSpec, Manifest, save_artifact
    from models.blockdrop import BlockDropModel
    from models.classes import CIFAR10_CLASSES
    from models.resnet import FlatResNet, ResNetConfig
    from training.distill import load_teacher
    from training.export import dataset_input

    cifar10 = dataset_input("cifar10")
    manifest = Manifest(name="t", kind="resnet", architecture={}, classes=list(CIFAR10_CLASSES), input=cifar10)
    save_artifact(BlockDropModel(FlatResNet(ResNetConfig("cifar", 8, 10))), tmp_path / "t", manifest)
    teacher = load_teacher(str(tmp_path / "t"), cifar10, CIFAR10_CLASSES)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    with pytest.raises(ValueError, match="same input and predict the same classes"):
        load_teacher(str(tmp_path / "t"), cifar10, tuple(reversed(CIFAR10_CLASSES)))
    with pytest.raises(ValueError, match="same input"):
        load_teacher(str(tmp_path / "t"), InputSpec(32, 32, None, None, None), CIFAR10_CLASSES)
