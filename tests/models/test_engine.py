"""The bucketed executor against the plain one: the same masks, FLOPs and logits (within 1e-5) for random masks and
for the shipped policies, at batch sizes on both sides of every bucket edge; pieces made once and replayed for later
batches, as graphs replay them; its CUDA graphs on a GPU (skipped without one)."""

from __future__ import annotations

import pytest
import torch

from models import load_artifact
from models.blockdrop import BlockDropModel, run_backbone
from models.engine import BucketedEngine, bucket_for, bucket_sizes
from models.folding import fold_batchnorm
from models.policy import PolicyConfig, PolicyNet
from models.resnet import cifar_resnet, imagenet_resnet
from tests.conftest import randomize_batchnorm

CHECKPOINTS = "models/checkpoints"
SHIPPED_POLICIES = ["cifar10-resnet32-blockdrop", "cifar10-resnet110-blockdrop", "cifar10-resnet32-slim-blockdrop"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _folded_on_cuda(name: str) -> BlockDropModel:
    """A shipped artifact on the GPU with its BatchNorms folded, as the service runs it."""
    model = load_artifact(f"{CHECKPOINTS}/{name}", device="cuda")
    fold_batchnorm(model)
    return model


def edge_sizes(buckets: list[int]) -> list[int]:
    """Every bucket's size and the size one past it (the first batch padded into the next bucket)."""
    return sorted({n for b in buckets for n in (b, b + 1) if n <= buckets[-1]})


def _random_mask(n: int, k: int, seed: int) -> torch.Tensor:
    mask = torch.rand(n, k, generator=torch.Generator().manual_seed(seed)) < 0.5
    mask[0] = True  # one image keeps everything
    if n > 1:
        mask[1] = False  # one keeps nothing
    return mask


def _tiny_blockdrop(depth: int = 20) -> BlockDropModel:
    backbone = randomize_batchnorm(cifar_resnet(depth))
    policy = randomize_batchnorm(PolicyNet(PolicyConfig("cifar", backbone.num_blocks)), seed=3)
    return BlockDropModel(backbone, policy).eval()


def test_buckets_are_one_two_four_then_multiples_of_eight_and_pad_by_at_most_seven_rows_or_a_quarter():
    buckets = bucket_sizes(2048)
    assert buckets[:8] == [1, 2, 4, 8, 16, 24, 32, 40]
    assert all(b % 8 == 0 for b in buckets[3:]) and buckets[-1] == 2048 and 256 in buckets
    assert buckets == sorted(set(buckets)) and len(buckets) == 31
    for n in range(5, 2049):
        assert bucket_for(n, buckets) <= max(n + 7, n * 1.25)
    assert bucket_sizes(5) == [1, 2, 4, 5] and bucket_sizes(1) == [1]
    assert [bucket_for(n, [1, 2, 4, 8]) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError, match="larger than the largest bucket"):
        bucket_for(9, [1, 2, 4, 8])


def test_the_plan_pads_each_blocks_rows_with_rows_that_do_not_keep_it():
    model = _tiny_blockdrop(8)  # 3 blocks
    engine = BucketedEngine(model, max_batch=8)
    mask = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1], [1, 0, 1]], dtype=torch.bool)
    (rows, valid), kinds = engine.table(mask, 8), engine.kinds(mask, 8)
    assert kinds == [4, False, None]  # 3 rows keep block 0 (bucket 4), none block 1, all block 2
    assert rows[0, :3].tolist() == [0, 2, 4] and valid[0].tolist() == [True] * 3 + [False] * 5
    assert set(rows[0, 3:].tolist()) == {1, 3, 5, 6, 7}  # the padding points at rows that do not keep block 0
    five_of_eight = torch.tensor([1, 1, 0, 1, 1, 0, 0, 1], dtype=torch.bool).view(8, 1).expand(8, 3)
    assert engine.kinds(five_of_eight, 8) == [8, 8, 8]  # 5 keepers would pad to the whole bucket: mask instead
    # only a kept-row bucket below the batch bucket reads the table; otherwise none is built or sent
    assert engine.gathers([4, False, None], 8) and not engine.gathers([8, False, None], 8)
    assert not engine.gathers(engine.kinds(mask[:1], 1), 1)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(engine.infer(x).logits, engine.infer(x, keep_mask=engine.infer(x).keep_mask).logits)
    assert not engine.buffers(1).rows.any() and not engine.buffers(1).valid.any()  # never sent at batch 1


@pytest.mark.parametrize(
    "make, size, max_batch",
    [(lambda: cifar_resnet(20), 32, 40), (lambda: imagenet_resnet(18), 64, 9)],
    ids=["resnet20", "resnet18-64px"],
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@torch.inference_mode()
def test_random_masks_give_the_plain_executors_logits_at_every_bucket_edge(make, size, max_batch, channels_last):
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = BlockDropModel(randomize_batchnorm(make()), None, (size, size)).eval().to(memory_format=layout)
    engine = BucketedEngine(model, max_batch=max_batch, memory_format=layout)
    for n in edge_sizes(engine.buckets):
        x = torch.randn(n, 3, size, size).contiguous(memory_format=layout)
        mask = _random_mask(n, model.num_blocks, seed=n)
        got = engine.infer(x, keep_mask=mask)
        assert torch.equal(got.keep_mask, mask)
        assert torch.equal(got.flops, model.flops_table.per_image(mask, include_policy=False))
        assert (got.logits - run_backbone(model.backbone, x, mask)).abs().max() <= 1e-5, n


@torch.inference_mode()
def test_full_mode_and_a_plain_network_run_the_whole_network_padded():
    model = _tiny_blockdrop(8)
    engine = BucketedEngine(model, max_batch=8)
    for n in (1, 3, 8):
        x = torch.randn(n, 3, 32, 32)
        got = engine.infer(x, mode="full")
        assert (got.logits - model.backbone(x)).abs().max() <= 1e-5
        assert got.keep_mask.all() and (got.flops == model.flops_table.full).all()


@pytest.mark.parametrize("name", SHIPPED_POLICIES)
@torch.inference_mode()
def test_the_shipped_policies_give_the_same_masks_flops_and_logits(name):
    """As the service loads them: BatchNorm folded, channels-last, the artifact's threshold; real-looking inputs."""
    model = load_artifact(f"{CHECKPOINTS}/{name}")
    fold_batchnorm(model)
    model.to(memory_format=torch.channels_last)
    threshold = float(model.manifest.defaults.get("threshold", 0.5))
    engine = BucketedEngine(model, max_batch=33, memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    for n in edge_sizes(engine.buckets):
        x = torch.randn(n, 3, 32, 32, generator=generator).contiguous(memory_format=torch.channels_last)
        plain = model.infer(x, threshold=threshold)
        got = engine.infer(x, threshold=threshold)
        assert torch.equal(got.keep_mask, plain.keep_mask), n
        assert torch.equal(got.flops, plain.flops), n
        assert (got.logits - plain.logits).abs().max() <= 1e-5, n
    assert 0 < plain.keep_mask.float().mean() < 1  # the policy really drops some blocks, keeps others


@torch.inference_mode()
def test_thresholds_per_row_are_the_policys_comparison():
    model = _tiny_blockdrop(8)
    engine = BucketedEngine(model, max_batch=8)
    x = torch.randn(5, 3, 32, 32)
    thresholds = torch.tensor([0.0, 1.1, 0.5, 0.3, 0.7])
    got = engine.infer(x, threshold=thresholds)
    assert torch.equal(got.keep_mask, model.decide(x, "policy", thresholds))
    assert got.keep_mask[0].all() and not got.keep_mask[1].any()


def test_what_the_engine_cannot_run_is_refused_plainly():
    model = _tiny_blockdrop(8)
    engine = BucketedEngine(model, max_batch=4)
    with pytest.raises(ValueError, match="larger than the largest bucket"):
        engine.infer(torch.randn(5, 3, 32, 32))
    with pytest.raises(ValueError, match="not first_k"):
        engine.infer(torch.randn(2, 3, 32, 32), mode="first_k")
    with pytest.raises(ValueError, match=r"keep_mask must be \[2, 3\]"):
        engine.infer(torch.randn(2, 3, 32, 32), keep_mask=torch.ones(2, 4, dtype=torch.bool))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA graphs need the model on a CUDA device"):
            engine.capture([1])


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@torch.inference_mode()
def test_captured_graphs_replay_the_eager_pieces_on_the_gpu(precision):
    from models.precision import apply_precision

    model = _folded_on_cuda("cifar10-resnet32-blockdrop")
    apply_precision(model, precision)
    model.to(memory_format=torch.channels_last)
    eager = BucketedEngine(model, max_batch=16, memory_format=torch.channels_last)
    graphed = BucketedEngine(model, max_batch=16, memory_format=torch.channels_last)
    report = graphed.capture([1, 5, 16], budget_s=120)
    assert report.graphs > 0 and report.skipped == 0 and graphed.graphs_in_use
    tolerance = 1e-4 if precision == "fp32" else 5e-2
    for n in (1, 2, 5, 9, 16):
        x = torch.randn(n, 3, 32, 32, device="cuda")
        want, got = eager.infer(x), graphed.infer(x)
        assert torch.equal(got.keep_mask, want.keep_mask)
        assert (got.logits - want.logits).abs().max() <= tolerance
        mask = _random_mask(n, model.num_blocks, seed=n)
        want, got = eager.infer(x, keep_mask=mask), graphed.infer(x, keep_mask=mask)
        assert (got.logits - want.logits).abs().max() <= tolerance
        assert (graphed.infer(x, mode="full").logits - eager.infer(x, mode="full").logits).abs().max() <= tolerance


@torch.inference_mode()
def test_signature_graphs_are_a_cuda_matter_and_change_nothing_on_a_cpu():
    model = _tiny_blockdrop(8)
    plain, with_signatures = BucketedEngine(model, 8), BucketedEngine(model, 8, signature_graphs=4)
    x = torch.randn(5, 3, 32, 32)
    for _ in range(3):
        assert torch.equal(with_signatures.infer(x).logits, plain.infer(x).logits)
    assert not with_signatures.graphs_in_use


@needs_cuda
@torch.inference_mode()
def test_a_signature_seen_twice_replays_as_one_graph_with_the_same_answers():
    model = _folded_on_cuda("cifar10-resnet110-blockdrop")
    eager = BucketedEngine(model, max_batch=8)
    graphed = BucketedEngine(model, max_batch=8, signature_graphs=2)
    graphed.capture([1, 8], budget_s=120)
    inputs = [torch.randn(n, 3, 32, 32, device="cuda") for n in (1, 8, 3)]
    for _ in range(3):  # the second sighting captures, the third replays
        for x in inputs:
            want, got = eager.infer(x), graphed.infer(x)
            assert torch.equal(got.keep_mask, want.keep_mask)
            assert (got.logits - want.logits).abs().max() <= 1e-4
    # three signatures seen as often: the first two admitted, the third never more frequent than they
    assert len(graphed.signatures) == 2 and graphed.signatures.hits == 2  # in the third round


def test_a_batch_of_one_has_its_mask_for_signature_and_prefilling_needs_cuda():
    engine = BucketedEngine(_tiny_blockdrop(8), max_batch=8, signature_graphs=4)  # 3 blocks
    assert engine.signature_of(torch.tensor([[True, False, True]])) == (1, (None, False, None))
    assert engine.signature_of(torch.tensor([[True, False, True]] * 3)) == (4, (None, False, None))
    assert engine.signature_of(torch.tensor([[True, False, True], [False, False, True]])) == (2, (1, False, None))
    with pytest.raises(ValueError, match="CUDA"):
        engine.prefill_signatures(torch.ones(2, 3, dtype=torch.bool))


@needs_cuda
@torch.inference_mode()
def test_prefilled_masks_replay_one_graph_from_their_first_sighting_with_the_same_answers():
    model = _folded_on_cuda("cifar10-resnet110-blockdrop")
    eager = BucketedEngine(model, max_batch=8)
    inputs = [torch.randn(1, 3, 32, 32, device="cuda") for _ in range(4)]
    masks = torch.cat([eager.infer(x).keep_mask for x in inputs])
    graphed = BucketedEngine(model, max_batch=8, signature_graphs=2)
    assert graphed.prefill_signatures(masks[:3], budget_s=120) == min(2, len(torch.unique(masks[:3], dim=0)))
    assert graphed.capture_report.signature_graphs == len(graphed.signatures) <= 2
    kept = [graphed.signature_of(mask.view(1, -1)) in graphed.signatures for mask in masks]
    assert kept[0]  # the most frequent first
    for x in inputs:
        want, got = eager.infer(x), graphed.infer(x)
        assert torch.equal(got.keep_mask, want.keep_mask) and (got.logits - want.logits).abs().max() <= 1e-4
    assert graphed.signatures.hits == sum(kept)  # each prefilled mask replayed from its first sighting


class _Replay:
    """A stand-in for a CUDA graph on the CPU: replaying it runs the piece it was made from, as it was made (a
    real graph replays the kernels recorded then, on the memory they used then)."""

    def __init__(self, piece):
        self.piece = piece
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        self.piece()


@torch.inference_mode()
def test_pieces_made_once_and_replayed_for_later_batches_give_the_eager_answers():
    """What capturing relies on: a piece reads and writes only its bucket's static buffers, so the piece made at
    start-up (``pieces``, as ``capture`` records them) still answers every later batch of that bucket."""
    model = _tiny_blockdrop(20)
    eager, replayed = BucketedEngine(model, max_batch=8), BucketedEngine(model, max_batch=8)
    graphs = {key: _Replay(piece) for b in replayed.buckets for key, piece in replayed.pieces(b)}
    replayed._graphs = graphs  # as capture() fills it, without CUDA
    for n in (1, 2, 3, 5, 8, 6, 1):
        x = torch.randn(n, 3, 32, 32)
        for mask in (None, _random_mask(n, model.num_blocks, seed=n)):
            want, got = eager.infer(x, 0.5, keep_mask=mask), replayed.infer(x, 0.5, keep_mask=mask)
            assert torch.equal(got.keep_mask, want.keep_mask) and torch.equal(got.flops, want.flops)
            assert (got.logits - want.logits).abs().max() <= 1e-5, n
        assert torch.equal(replayed.infer(x, mode="full").logits, eager.infer(x, mode="full").logits)
    assert all(graph.replays for key, graph in graphs.items() if key[0] in ("policy", "stem", "head", "full"))


@torch.inference_mode()
def test_signatures_captured_while_serving_replay_for_later_batches_with_the_eager_answers(monkeypatch):
    """The signature cache in ``infer``, on the CPU with stand-in graphs: a signature seen a second time is captured
    (after that batch is answered), and later batches with that signature, other images and other rows, replay it
    with the eager answers."""
    model = _tiny_blockdrop(20)
    eager, replayed = BucketedEngine(model, max_batch=8), BucketedEngine(model, max_batch=8, signature_graphs=8)
    monkeypatch.setattr(replayed, "_captures_while_serving", True)
    monkeypatch.setattr(replayed, "_capture_one", lambda piece, warm=True, error_mode="global": _Replay(piece))
    masks = {3: _random_mask(3, model.num_blocks, seed=1), 1: torch.ones(1, model.num_blocks, dtype=torch.bool)}
    for round_ in range(4):
        for n, mask in masks.items():
            x = torch.randn(n, 3, 32, 32)
            mask = mask[torch.randperm(n)]  # other rows keep the blocks, same signature
            want, got = eager.infer(x, keep_mask=mask), replayed.infer(x, keep_mask=mask)
            assert torch.equal(got.keep_mask, want.keep_mask) and torch.equal(got.flops, want.flops)
            assert (got.logits - want.logits).abs().max() <= 1e-5, (round_, n)
    assert len(replayed.signatures) == 2
    assert replayed.signatures.hits == 4  # rounds 3 and 4: captured in round 2, at the second sighting


@torch.inference_mode()
def test_recording_lists_the_pieces_a_batch_runs_and_nothing_it_skips():
    engine = BucketedEngine(_tiny_blockdrop(8), max_batch=8)  # 3 blocks, one stage entry with a shortcut
    mask = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1], [1, 0, 1]], dtype=torch.bool)
    x = torch.randn(5, 3, 32, 32)
    with engine.recording() as keys:
        engine.infer(x, keep_mask=mask)
    entries = {key for key in keys if key[0] == "entry"}
    assert keys == {("stem", 8), ("block", 8, 0, 4), ("block", 8, 2, None), ("head", 8), *entries}
    assert entries and all(key in dict(engine.pieces(8, "policy")) for key in keys)
    with engine.recording() as keys:
        engine.infer(x[:1])
    assert ("policy", 1) in keys and not any(key[0] == "block" and key[3] is not None for key in keys)
    recorded = set(keys)
    engine.infer(x, keep_mask=torch.ones(5, 3, dtype=torch.bool))  # outside a recording nothing is collected
    assert keys == recorded


@needs_cuda
@torch.inference_mode()
def test_capturing_the_recorded_pieces_captures_those_alone_and_answers_the_same():
    model = _folded_on_cuda("cifar10-resnet32-blockdrop")
    eager, graphed = BucketedEngine(model, max_batch=256), BucketedEngine(model, max_batch=256)
    batches = [torch.randn(256, 3, 32, 32, device="cuda") for _ in range(2)]
    with graphed.recording() as keys:
        graphed.infer(batches[0])
    report = graphed.capture(keys=keys, budget_s=120)
    assert report.graphs == len(keys) and set(graphed._graphs) == keys and report.batch_buckets == [256]
    for x in batches:  # the second batch may run a piece not captured: eagerly, with the same answers
        want, got = eager.infer(x), graphed.infer(x)
        assert torch.equal(got.keep_mask, want.keep_mask)
        assert (got.logits - want.logits).abs().max() <= 1e-4


def test_a_mode_captures_only_the_pieces_it_runs():
    engine = BucketedEngine(_tiny_blockdrop(8), max_batch=8)  # 3 blocks, one stage entry with a shortcut
    assert [key for key, _ in engine.pieces(8, "full")] == [("full", 8)]
    policy_keys = [key for key, _ in engine.pieces(8, "policy")]
    assert ("full", 8) not in policy_keys and policy_keys[:2] == [("policy", 8), ("stem", 8)]
    assert {key[3] for key in policy_keys if key[0] == "block"} == {None, 1, 2, 4, 8}  # every kept-row bucket
    assert len(engine.pieces(8)) == len(policy_keys) + 1
    assert {key[3] for key, _ in engine.pieces(1, "policy") if key[0] == "block"} == {None}  # one row: all or none
