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
