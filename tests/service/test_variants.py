"""The served variant: the memory layout it runs in on CPU, and that the layout changes no answer."""

from __future__ import annotations

import pytest
import torch

from service.config import VariantSettings
from service.variants import ExecutionOptions, load_variant


@pytest.mark.parametrize(
    "name, mode", [("tiny-blockdrop", "blockdrop"), ("tiny-resnet", "full"), ("tiny-biglittle", "full")]
)
def test_cpu_variants_run_channels_last_with_the_same_answers(artifacts, name, mode):
    settings = VariantSettings(name="v", artifact=artifacts[name], mode=mode)
    served = load_variant(settings, "cpu")
    plain = load_variant(settings, "cpu", channels_last=False)
    assert served.memory_format == torch.channels_last and plain.memory_format == torch.contiguous_format
    conv = next(m for m in served.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    batch = torch.randn(9, 3, 32, 32)
    a, b = served.infer(batch), plain.infer(batch)
    assert torch.allclose(a.logits, b.logits, atol=1e-5, rtol=0)
    assert torch.equal(a.keep_mask, b.keep_mask) and torch.equal(a.flops, b.flops)


@pytest.mark.parametrize("name, mode", [("tiny-blockdrop", "blockdrop"), ("tiny-resnet", "full")])
def test_the_bucketed_executor_serves_the_plain_executors_answers(artifacts, name, mode):
    settings = VariantSettings(name="v", artifact=artifacts[name], mode=mode)
    plain = load_variant(settings, "cpu")
    bucketed = load_variant(settings, "cpu", execution=ExecutionOptions(executor="bucketed", max_batch_size=8))
    assert plain.engine is None and bucketed.engine is not None
    assert bucketed.summary()["executor"] == "bucketed" and plain.summary()["executor"] == "plain"
    for n in (1, 3, 8, 9):  # 9: past the largest bucket, the plain executor answers
        batch = torch.randn(n, 3, 32, 32)
        thresholds = torch.full((n,), float("nan"))
        thresholds[0] = 0.0  # row 0 keeps every block
        a, b = plain.infer(batch, thresholds), bucketed.infer(batch, thresholds)
        assert torch.equal(a.keep_mask, b.keep_mask) and torch.equal(a.flops, b.flops)
        assert (a.logits - b.logits).abs().max() <= 1e-5


def test_precision_changes_the_backbone_and_never_the_policy(artifacts):
    settings = VariantSettings(name="v", artifact=artifacts["tiny-blockdrop"], mode="blockdrop")
    fp32 = load_variant(settings, "cpu")
    assert fp32.precision == "fp32" and fp32.summary()["precision"] == "fp32"  # auto on a CPU
    assert fp32.summary()["cuda_graphs"] is False
    for executor in ("plain", "bucketed"):
        bf16 = load_variant(settings, "cpu", execution=ExecutionOptions(precision="bf16", executor=executor))
        assert bf16.precision == "bf16" and bf16.model.backbone.fc.weight.dtype == torch.bfloat16
        assert all(p.dtype == torch.float32 for p in bf16.model.policy.parameters())
        batch = torch.randn(6, 3, 32, 32)
        a, b = fp32.infer(batch), bf16.infer(batch)
        assert torch.equal(a.keep_mask, b.keep_mask)  # the fp32 policy draws the same masks
        assert b.logits.dtype == torch.float32 and (a.logits - b.logits).abs().max() < 0.1


def test_a_plain_biglittle_stays_fp32(artifacts):
    settings = VariantSettings(name="v", artifact=artifacts["tiny-biglittle"], mode="full")
    variant = load_variant(settings, "cpu", execution=ExecutionOptions(precision="bf16", executor="bucketed"))
    assert variant.precision == "fp32" and variant.engine is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name, mode", [("tiny-blockdrop", "blockdrop"), ("tiny-resnet", "full")])
def test_on_the_gpu_a_variant_runs_captured_graphs_through_pinned_buffers(artifacts, name, mode):
    settings = VariantSettings(name="v", artifact=artifacts[name], mode=mode)
    reference = load_variant(settings, "cpu")
    # masks against the plain executor on the same GPU: cuDNN's TF32 convolutions may move a probability that sits
    # at the threshold against the CPU's
    plain = load_variant(settings, "cuda", execution=ExecutionOptions(precision="fp32"))
    graphed = load_variant(settings, "cuda", execution=ExecutionOptions(cuda_graphs=True, max_batch_size=8))
    summary = graphed.summary()
    assert summary["cuda_graphs"] is True and summary["executor"] == "bucketed" and graphed.engine.graphs_in_use
    assert summary["precision"] == ("bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32")
    assert graphed.staging is not None and graphed.staging.images.is_pinned()
    for n in (1, 3, 8, 9):  # 9: past the largest bucket, the plain executor on the GPU answers
        batch = torch.randn(n, 3, 32, 32)
        want, got = plain.infer(batch), graphed.infer(batch)
        assert got.logits.device.type == "cpu" and got.logits.dtype == torch.float32
        assert torch.equal(got.keep_mask, want.keep_mask) and torch.equal(got.flops, want.flops)
        cpu = reference.infer(batch).logits
        assert (got.logits - cpu).abs().max() <= 0.02 * cpu.abs().max() + 0.05  # bf16 where the GPU has it


def test_a_variant_whose_capture_cuda_refuses_runs_without_graphs_and_says_so(artifacts, monkeypatch, caplog):
    from service.variants import _capture

    settings = VariantSettings(name="v", artifact=artifacts["tiny-blockdrop"], mode="blockdrop")
    execution = ExecutionOptions(executor="bucketed", signature_graphs=8)
    variant = load_variant(settings, "cpu", execution=execution)
    variant.cuda_graphs, variant.engine.signature_graphs = True, 8  # as on CUDA, before the capture

    def refused(*args, **kwargs):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(variant.engine, "capture", refused)
    _capture(variant, settings, execution)
    assert variant.summary()["cuda_graphs"] is False and variant.engine.signature_graphs == 0
    assert "capturing CUDA graphs failed; it runs without them" in caplog.text
    batch = torch.randn(3, 3, 32, 32)
    assert torch.equal(variant.infer(batch).keep_mask, load_variant(settings, "cpu").infer(batch).keep_mask)


def test_with_the_plain_executor_a_refused_capture_leaves_the_plain_executor(artifacts, monkeypatch):
    from service.variants import _capture

    settings = VariantSettings(name="v", artifact=artifacts["tiny-blockdrop"], mode="blockdrop")
    variant = load_variant(settings, "cpu", execution=ExecutionOptions(executor="bucketed"))
    variant.cuda_graphs = True  # as on CUDA with CUDA_GRAPHS and EXECUTOR=plain, before the capture

    def refused(*args, **kwargs):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(variant.engine, "capture", refused)
    _capture(variant, settings, ExecutionOptions(executor="plain", cuda_graphs=True))
    assert variant.engine is None and variant.summary()["executor"] == "plain" and not variant.cuda_graphs


def test_a_variant_captures_its_artifacts_frequent_masks_with_the_budget_left_at_their_threshold_only(
    artifacts, tmp_path, monkeypatch, caplog
):
    import logging
    import shutil

    from models.artifacts import read_manifest, write_manifest
    from models.engine import CaptureReport
    from service.variants import _capture
    from training.masks import frequent_masks_record

    caplog.set_level(logging.INFO, logger="service.variants")
    artifact = shutil.copytree(artifacts["tiny-blockdrop"], tmp_path / "bd")
    drawn = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    execution = ExecutionOptions(executor="bucketed", signature_graphs=8, capture_budget_s=60, capture_budget_mb=100)

    def record(masks: str | None = None) -> float:
        manifest = read_manifest(artifact)
        manifest.frequent_masks = frequent_masks_record(drawn, manifest.threshold, top=8)
        if masks is not None:
            manifest.frequent_masks["masks"] = masks
        write_manifest(artifact, manifest)
        return manifest.threshold

    def served(threshold: float | None = None, prefill=None):
        """A CPU variant as on CUDA before its capture, whose pieces took 10 s and 40 MiB; the prefills asked."""
        settings = VariantSettings(name="v", artifact=artifact, mode="blockdrop", threshold=threshold)
        variant = load_variant(settings, "cpu", execution=execution)
        variant.cuda_graphs, variant.engine.signature_graphs = True, 8
        asked = []
        monkeypatch.setattr(variant.engine, "capture", lambda *a, **k: CaptureReport(seconds=10.0, bytes=40 * 2**20))
        monkeypatch.setattr(variant.engine, "prefill_signatures", prefill or (lambda *args: asked.append(args) or 0))
        _capture(variant, settings, execution)
        return variant, asked

    threshold = record()
    variant, asked = served()
    [(masks, budget_s, budget_bytes)] = asked
    assert masks.tolist() == [[True, True, False], [True, False, True]]  # the most frequent first
    assert budget_s == 50.0 and budget_bytes == 60 * 2**20 and variant.engine.signature_graphs == 8
    assert served(threshold=threshold + 0.1)[1] == [] and "no frequent masks recorded at threshold" in caplog.text
    record("zz:3")
    assert served()[1] == [] and "frequent masks unreadable" in caplog.text

    def refused(*args):
        raise RuntimeError("CUDA error: out of memory")

    record()
    variant, _ = served(prefill=refused)
    assert variant.engine.signature_graphs == 0 and variant.cuda_graphs  # the pieces' graphs stay
    assert "capturing its frequent masks failed; signature graphs are off" in caplog.text
