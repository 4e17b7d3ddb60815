"""Tiny runs of every train command on a synthetic CIFAR folder; resume equivalence; eval --json schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cli.main import main as blockdrop
from models import load_artifact
from tests.cli_refusal import refusal
from training.checkpoint import RunFolder

TINY = ["--max-batches", "2", "--batch-size", "16", "--val-size", "40", "--threads", "1"]


def _backbone(cifar_root, tmp_path, epochs: int = 2, name: str = "bb") -> list[str]:
    return [
        "train",
        "backbone",
        "--data-root",
        str(cifar_root),
        "--depth",
        "8",
        "--epochs",
        str(epochs),
        "--run-dir",
        str(tmp_path / name),
        "--out",
        str(tmp_path / f"{name}-artifact"),
        *TINY,
        "--max-batches",
        "5",
    ]


def _policy(backbone, cifar_root, run_dir, *options: str) -> list[str]:
    """A tiny ``train policy`` run over the ``backbone`` artifact into ``run_dir``."""
    return [
        "train",
        "policy",
        "--backbone",
        str(backbone),
        "--data-root",
        str(cifar_root),
        "--run-dir",
        str(run_dir),
        *options,
        *TINY,
    ]


@pytest.fixture(scope="module")
def trained(cifar_root, tmp_path_factory):
    """backbone -> policy -> finetune, each a tiny run, sharing artifacts like the real pipeline."""
    tmp = tmp_path_factory.mktemp("pipeline")
    assert blockdrop(_backbone(cifar_root, tmp)) == 0
    policy = _policy(
        tmp / "bb-artifact", cifar_root, tmp / "policy", "--epochs", "4", "--out", str(tmp / "policy-artifact")
    )
    assert blockdrop(policy) == 0
    assert (
        blockdrop(
            [
                "train",
                "finetune",
                "--model",
                str(tmp / "policy-artifact"),
                "--data-root",
                str(cifar_root),
                "--epochs",
                "1",
                "--run-dir",
                str(tmp / "ft"),
                "--out",
                str(tmp / "ft-artifact"),
                *TINY,
            ]
        )
        == 0
    )
    return tmp


def test_backbone_run_writes_log_checkpoint_and_artifact(trained):
    history = RunFolder(trained / "bb").history()
    assert [r["epoch"] for r in history] == [1, 2]
    assert {"train_loss", "val_accuracy", "seconds", "lr"} <= history[0].keys()
    model = load_artifact(trained / "bb-artifact")
    assert model.manifest.kind == "resnet" and model.num_blocks == 3
    assert model.manifest.training["epochs"] == 2 and "train backbone" in model.manifest.training["command"]


def test_policy_run_follows_the_curriculum_and_finetune_trains_the_backbone(trained):
    history = RunFolder(trained / "policy").history()
    assert [r["released"] for r in history] == [1, 2, 3, 3]
    assert {"val_accuracy", "val_blocks_mean", "val_distinct_policies", "val_flops_mean"} <= history[-1].keys()
    policy_model = load_artifact(trained / "policy-artifact")
    finetuned = load_artifact(trained / "ft-artifact")
    assert finetuned.manifest.kind == "blockdrop" and finetuned.manifest.training["started_from"] == "policy-artifact"
    # the policy stage's record goes along: its command, and its epochs in the totals
    policy_stage = load_artifact(trained / "policy-artifact").manifest.training
    assert finetuned.manifest.training["earlier"] == policy_stage
    assert finetuned.manifest.training["epochs"] == policy_stage["epochs"] + 1
    # the policy stage froze the backbone; finetuning changed it
    backbone = load_artifact(trained / "bb-artifact").backbone.state_dict()
    assert all(torch.equal(v, policy_model.backbone.state_dict()[k]) for k, v in backbone.items())
    assert not all(torch.equal(v, finetuned.backbone.state_dict()[k]) for k, v in backbone.items())


def _interrupt_after_first_save(monkeypatch):
    original = RunFolder.save
    calls = {"n": 0}

    def save_then_stop(self, state):
        original(self, state)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunFolder, "save", save_then_stop)


def test_interrupted_backbone_run_resumes_to_identical_weights(cifar_root, tmp_path, monkeypatch, capsys):
    assert blockdrop(_backbone(cifar_root, tmp_path, name="straight")) == 0
    with monkeypatch.context() as patch:
        _interrupt_after_first_save(patch)
        assert blockdrop(_backbone(cifar_root, tmp_path, name="resumed")) == 130  # Ctrl-C: a line, not a traceback
    said = capsys.readouterr().err.splitlines()[-1]
    resumes = f"the same command resumes {tmp_path / 'resumed'} after its last finished epoch"
    assert said == f"blockdrop train: interrupted; {resumes}"
    assert RunFolder(tmp_path / "resumed").load()["epoch"] == 1
    assert blockdrop(_backbone(cifar_root, tmp_path, name="resumed")) == 0
    straight = RunFolder(tmp_path / "straight").load()
    resumed = RunFolder(tmp_path / "resumed").load()
    assert resumed["epoch"] == 2
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_interrupted_policy_run_resumes_to_identical_weights(cifar_root, trained, tmp_path, monkeypatch):
    def policy_args(name):
        return _policy(trained / "bb-artifact", cifar_root, tmp_path / name, "--epochs", "2")

    assert blockdrop(policy_args("straight")) == 0
    with monkeypatch.context() as patch:
        _interrupt_after_first_save(patch)
        assert blockdrop(policy_args("resumed")) == 130  # Ctrl-C: one line on resuming, status 130
    assert blockdrop(policy_args("resumed")) == 0
    straight, resumed = RunFolder(tmp_path / "straight").load(), RunFolder(tmp_path / "resumed").load()
    for key, value in straight["policy"].items():
        assert torch.equal(value, resumed["policy"][key]), key


def test_resuming_with_other_settings_is_refused(cifar_root, tmp_path, capsys):
    assert blockdrop(_backbone(cifar_root, tmp_path, epochs=1)) == 0
    assert blockdrop(_backbone(cifar_root, tmp_path, epochs=3)) == 2
    assert "epochs: 1 -> 3" in capsys.readouterr().err


def _eval(artifact, cifar_root, *options: str) -> int:
    return blockdrop(["eval", str(artifact), "--data-root", str(cifar_root), *options])


def test_eval_json_schema(trained, cifar_root, capsys):
    options = ("--split", "test", "--json", "--sweep", "0.4,0.6", "--record")
    assert _eval(trained / "ft-artifact", cifar_root, *options) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 40 and set(result["rows"]) == {"full", "first_k", "random_k", "blockdrop"}
    for row in list(result["rows"].values()) + result["sweep"]:
        assert {"accuracy", "blocks_mean", "blocks_std", "flops_mean", "distinct_policies"} <= row.keys()
        assert 0.0 <= row["accuracy"] <= 1.0
    assert [row["threshold"] for row in result["sweep"]] == [0.4, 0.6]
    assert result["rows"]["first_k"]["blocks_mean"] == result["k"]
    manifest = load_artifact(trained / "ft-artifact").manifest
    assert manifest.metrics["test"]["images"] == 40 and manifest.defaults["threshold"] == 0.5
    options = ("--split", "test", "--threshold", "0.4", "--sweep", "", "--record")
    assert _eval(trained / "ft-artifact", cifar_root, *options) == 0
    assert load_artifact(trained / "ft-artifact").manifest.defaults["threshold"] == 0.4
    capsys.readouterr()
    assert _eval(trained / "ft-artifact", cifar_root, "--val-size", "40") == 0
    assert "BlockDrop" in capsys.readouterr().out


def test_eval_records_the_accuracy_of_each_precision_apart(trained, cifar_root, tmp_path, capsys):
    artifact = tmp_path / "ft"
    shutil.copytree(trained / "ft-artifact", artifact)
    fp32_table = load_artifact(artifact).manifest.metrics.get("test")
    assert _eval(artifact, cifar_root, "--split", "test", "--sweep", "", "--precision", "bf16", "--record") == 0
    metrics = load_artifact(artifact).manifest.metrics
    assert metrics.get("test") == fp32_table  # the fp32 reference table is left alone
    bf16 = metrics["precision"]["bf16"]["test"]
    assert bf16["device"] == "cpu" and bf16["images"] == 40
    assert set(bf16["rows"]) == {"full", "first_k", "random_k", "blockdrop"}
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in bf16["rows"].values())
    capsys.readouterr()
    assert _eval(artifact, cifar_root, "--split", "test", "--sweep", "", "--json", "--record") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["precision"] == "fp32" and result["device"] == "cpu"  # auto on a CPU
    metrics = load_artifact(artifact).manifest.metrics
    assert set(metrics["precision"]) == {"bf16", "fp32"}
    assert (
        metrics["precision"]["fp32"]["test"]["rows"]["blockdrop"]["accuracy"] == result["rows"]["blockdrop"]["accuracy"]
    )


def test_eval_random_k_rows_for_a_plain_resnet(trained, cifar_root, capsys):
    artifact = trained / "bb-artifact"
    num_blocks = load_artifact(artifact).num_blocks
    assert _eval(artifact, cifar_root, "--split", "test", "--json", "--random-k", f"0,{num_blocks}") == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["rows"]) == {"full"}
    none_kept, all_kept = result["random_k_sweep"]
    assert (none_kept["k"], none_kept["blocks_mean"], none_kept["blocks_std"]) == (0, 0.0, 0.0)
    # every block kept: the same network as the full row, image for image
    assert all_kept["blocks_mean"] == num_blocks and all_kept["accuracy"] == result["rows"]["full"]["accuracy"]
    assert none_kept["flops_mean"] < all_kept["flops_mean"] == result["rows"]["full"]["flops_mean"]
    assert _eval(artifact, cifar_root, "--split", "test", "--random-k", "1") == 0
    assert "RandomK=1" in capsys.readouterr().out
    eval_args = ["eval", str(artifact), "--data-root", str(cifar_root)]
    assert f"has {num_blocks} blocks" in refusal([*eval_args, "--random-k", str(num_blocks + 1)])
    with pytest.raises(SystemExit):
        _eval(artifact, cifar_root, "--random-k", "two")
    assert "expected comma-separated block counts" in capsys.readouterr().err


def test_slim_run_prunes_physically_and_exports(trained, cifar_root, tmp_path):
    args = [
        "train",
        "slim",
        "--backbone",
        str(trained / "bb-artifact"),
        "--data-root",
        str(cifar_root),
        "--percent",
        "0.5",
        "--sparsity-epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--run-dir",
        str(tmp_path / "slim"),
        "--out",
        str(tmp_path / "slim-artifact"),
        *TINY,
        "--max-batches",
        "5",
    ]
    assert blockdrop(args) == 0
    model = load_artifact(tmp_path / "slim-artifact")
    widths = model.manifest.architecture["backbone"]["inner_widths"]
    assert len(widths) == 3 and sum(widths) < 16 + 32 + 64
    assert model.manifest.training["slimming"]["percent"] == 0.5
    assert (tmp_path / "slim" / "sparsity" / "log.jsonl").exists()
    assert (tmp_path / "slim" / "finetune-p50" / "log.jsonl").exists()
    assert model.manifest.training["epochs"] == 2  # provenance counts the sparsity and the fine-tuning stage

    # BlockDrop on top of the slimmed backbone keeps its narrower blocks
    joint = ["train", "finetune", "--model", str(tmp_path / "slim-artifact"), "--data-root", str(cifar_root)]
    joint += ["--epochs", "1", "--run-dir", str(tmp_path / "slim-joint"), "--out", str(tmp_path / "slim-bd"), *TINY]
    assert blockdrop(joint) == 0
    slim_blockdrop = load_artifact(tmp_path / "slim-bd")
    assert slim_blockdrop.manifest.architecture["backbone"]["inner_widths"] == widths
    assert slim_blockdrop.flops_table.blocks == model.flops_table.blocks  # the same narrow blocks

    # one more fine-tuning cycle of the pruned artifact: same widths, provenance adds up the stages
    more = ["train", "slim", "--continue-from", str(tmp_path / "slim-artifact"), "--data-root", str(cifar_root)]
    more += ["--finetune-epochs", "1", "--run-dir", str(tmp_path / "slim-more"), "--out", str(tmp_path / "slim-more-a")]
    more += ["--distill-from", str(trained / "bb-artifact"), "--distill-weight", "0.7"]
    assert blockdrop([*more, *TINY, "--max-batches", "5"]) == 0
    continued = load_artifact(tmp_path / "slim-more-a").manifest
    assert continued.architecture["backbone"]["inner_widths"] == widths
    assert continued.training["epochs"] == 3 and continued.training["slimming"]["finetune_epochs"] == 2
    assert continued.training["earlier"]["command"] == model.manifest.training["command"]
    teacher = {"teacher": str(trained / "bb-artifact"), "weight": 0.7, "temperature": 4.0}
    assert continued.training["distillation"] == teacher
    assert RunFolder(tmp_path / "slim-more" / "finetune").load()["config"]["distill_weight"] == 0.7
    not_pruned = ["train", "slim", "--continue-from", str(trained / "bb-artifact"), "--data-root", str(cifar_root)]
    assert "not a pruned artifact" in refusal([*not_pruned, "--run-dir", str(tmp_path / "bad"), *TINY])


def test_finetune_can_start_a_new_policy_from_a_backbone(trained, cifar_root, tmp_path):
    args = [
        "train",
        "finetune",
        "--model",
        str(trained / "bb-artifact"),
        "--data-root",
        str(cifar_root),
        "--epochs",
        "1",
        "--initial-keep",
        "0.8",
        "--policy-lr",
        "1e-3",
        "--run-dir",
        str(tmp_path / "joint"),
        "--out",
        str(tmp_path / "joint-artifact"),
        *TINY,
    ]
    assert blockdrop(args) == 0
    model = load_artifact(tmp_path / "joint-artifact")
    assert model.manifest.kind == "blockdrop" and model.policy.config.input_downsample == 2
    assert model.manifest.training["started_from"] == "bb-artifact"
    # the backbone's own record goes along: the backbone artifact may never be shipped
    assert model.manifest.training["backbone_training"] == load_artifact(trained / "bb-artifact").manifest.training
    state = RunFolder(tmp_path / "joint").load()
    assert [group["lr"] for group in state["optimizer"]["param_groups"]] == [1e-3, 1e-4]


def test_policy_without_curriculum_decides_every_block_from_the_first_epoch(trained, cifar_root, tmp_path):
    options = ["--epochs", "1", "--no-curriculum", "--initial-keep", "0.7", "--penalty", "0.5"]
    args = _policy(
        trained / "bb-artifact", cifar_root, tmp_path / "flat", *options, "--out", str(tmp_path / "flat-artifact")
    )
    assert blockdrop(args) == 0
    assert [r["released"] for r in RunFolder(tmp_path / "flat").history()] == [3]
    model = load_artifact(tmp_path / "flat-artifact")
    assert model.manifest.kind == "blockdrop"
    assert "--no-curriculum" in model.manifest.training["command"]


def test_policy_refuses_an_initial_keep_outside_0_1(trained, cifar_root, tmp_path):
    args = _policy(trained / "bb-artifact", cifar_root, tmp_path / "bad", "--initial-keep", "1.0")
    assert "--initial-keep must lie strictly between 0 and 1, got 1.0" in refusal(args)


def test_finetune_distils_from_a_teacher_and_records_it(trained, cifar_root, tmp_path):
    args = ["train", "finetune", "--model", str(trained / "ft-artifact"), "--data-root", str(cifar_root)]
    args += ["--distill-from", str(trained / "bb-artifact"), "--distill-weight", "0.3", "--epochs", "1"]
    args += ["--run-dir", str(tmp_path / "kd"), "--out", str(tmp_path / "kd-artifact"), *TINY]
    assert blockdrop(args) == 0
    training = load_artifact(tmp_path / "kd-artifact").manifest.training
    assert training["distillation"] == {"teacher": str(trained / "bb-artifact"), "weight": 0.3, "temperature": 4.0}
    assert RunFolder(tmp_path / "kd").load()["config"]["distill_weight"] == 0.3


def test_finetune_from_threshold_starts_from_the_masks_at_that_threshold(trained):
    from training.policy import recenter

    policy = load_artifact(trained / "ft-artifact").policy
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        probabilities = policy(x)
        values = probabilities.flatten().unique()  # sorted: halfway between two middle ones, no probability equal
        threshold = float(values[len(values) // 2 - 1 : len(values) // 2 + 1].mean())
        recenter(policy, threshold)
        assert torch.equal(policy(x) >= 0.5, probabilities >= threshold)


@pytest.mark.parametrize("masks, block_learns", [("sampled", True), ("greedy", False)])
def test_finetune_trains_the_backbone_on_the_masks_asked_for(trained, masks, block_learns):
    """Block 0 is dropped by every greedy mask and kept by some samples: only sampled-mask training changes it."""
    import math

    from training.policy import PolicySteps, PolicyTrainConfig

    model = load_artifact(trained / "ft-artifact")
    with torch.no_grad():
        model.policy.logit.weight.zero_()
        model.policy.logit.bias.fill_(5.0)  # every other block kept by both
        model.policy.logit.bias[0] = math.log(0.3 / 0.7)  # greedy drops it; samples keep it 38 % of the time
    config = PolicyTrainConfig(epochs=1, joint=True, curriculum=False, backbone_masks=masks, bf16=False)
    optimizer = torch.optim.Adam([*model.policy.parameters(), *model.backbone.parameters()], lr=1e-2)
    steps = PolicySteps(model, None, None, config, optimizer, torch.device("cpu"))
    block = model.backbone.blocks[0][0]  # the first block of the first stage
    before = {k: v.clone() for k, v in block.state_dict().items() if v.is_floating_point()}
    model.backbone.train()
    torch.manual_seed(0)
    _, _, actions = steps._step(torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)), model.num_blocks)
    assert actions.sampled[:, 0].any() and not actions.greedy[:, 0].any()
    changed = any(not torch.equal(v, block.state_dict()[k]) for k, v in before.items())
    assert changed == block_learns


def test_finetune_refuses_a_from_threshold_outside_0_1(trained, cifar_root, tmp_path):
    args = ["train", "finetune", "--model", str(trained / "ft-artifact"), "--data-root", str(cifar_root)]
    args += ["--from-threshold", "1", "--run-dir", str(tmp_path / "bad"), *TINY]
    assert "--from-threshold must lie strictly between 0 and 1, got 1.0" in refusal(args)


def test_eval_of_a_network_without_policy_reports_the_full_row(cifar_root, tmp_path, capsys):
    from models.artifacts import InputSpec, Manifest, save_artifact
    from models.biglittle import BigLittleConfig, BigLittleNet
    from models.classes import CIFAR10_CLASSES

    model = BigLittleNet(BigLittleConfig("cifar", (2, 2, 2)))
    manifest = Manifest(
        name="bl",
        kind="biglittle",
        architecture={},
        classes=list(CIFAR10_CLASSES),
        input=InputSpec(32, 32, None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    )
    save_artifact(model, tmp_path / "bl", manifest)
    assert _eval(tmp_path / "bl", cifar_root, "--val-size", "40", "--json") == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert set(rows) == {"full"} and rows["full"]["blocks_mean"] == model.num_blocks
    eval_args = ["eval", str(tmp_path / "bl"), "--data-root", str(cifar_root), "--val-size", "40", "--random-k", "3"]
    assert "needs a ResNet or BlockDrop artifact" in refusal(eval_args)


def _adapt(trained, cifar_root, tmp_path, *options: str, name: str = "adapt") -> list[str]:
    args = ["train", "adapt", "--model", str(trained / "ft-artifact"), "--data-root", str(cifar_root)]
    return [*args, "--epochs", "2", "--run-dir", str(tmp_path / name), *TINY, "--max-batches", "5", *options]


def test_adapt_trains_the_backbone_on_the_frozen_policys_masks(trained, cifar_root, tmp_path):
    from training.data import Normalizer, load_cifar, train_val_split
    from training.evaluate import evaluate_blockdrop

    out = tmp_path / "adapted"
    assert blockdrop(_adapt(trained, cifar_root, tmp_path, "--threshold", "0.45", "--out", str(out))) == 0
    source, adapted = load_artifact(trained / "ft-artifact"), load_artifact(out)
    assert adapted.manifest.defaults["threshold"] == 0.45 and adapted.manifest.training["stage"] == "adapt"
    assert adapted.manifest.training["earlier"] == source.manifest.training
    assert adapted.manifest.training["epochs"] == source.manifest.training["epochs"] + 2
    for key, value in source.policy.state_dict().items():  # the policy is frozen, BatchNorm statistics included
        assert torch.equal(value, adapted.policy.state_dict()[key]), key
    assert not all(torch.equal(v, adapted.backbone.state_dict()[k]) for k, v in source.backbone.state_dict().items())
    # same policy, same masks: the validation blocks and FLOPs are the source model's at that threshold
    _, val = train_val_split(load_cifar(cifar_root, "train"), 40, seed=0)
    normalize = Normalizer(source.manifest.input.mean, source.manifest.input.std)
    before = evaluate_blockdrop(source, val, normalize, threshold=0.45)
    assert adapted.manifest.metrics["val_blocks_mean"] == pytest.approx(before["blocks_mean"])
    assert adapted.manifest.metrics["val_flops_mean"] == pytest.approx(before["flops_mean"])


def test_adapt_masks_are_the_served_ones_and_the_policy_stays_in_eval_mode(trained):
    from models.blockdrop import run_backbone
    from training.adapt import PolicyMaskedBackbone

    model = load_artifact(trained / "ft-artifact")
    masked = PolicyMaskedBackbone(model.backbone, model.policy, 0.5).train()
    assert masked.backbone.training and not masked.policy.training
    x = torch.randn(6, 3, 32, 32)
    served = model.infer(x, threshold=0.5)
    assert torch.equal(masked.keep_mask(x), served.keep_mask)
    masked.eval()
    with torch.no_grad():
        torch.testing.assert_close(masked(x), run_backbone(model.backbone, x, served.keep_mask))


def test_adapt_refuses_a_plain_resnet_and_a_changed_threshold_on_resume(trained, cifar_root, tmp_path, capsys):
    plain = ["train", "adapt", "--model", str(trained / "bb-artifact"), "--data-root", str(cifar_root)]
    assert "needs a BlockDrop artifact" in refusal([*plain, "--run-dir", str(tmp_path / "plain"), *TINY])
    assert "must be in" in refusal(_adapt(trained, cifar_root, tmp_path, "--threshold", "1.5", name="bad"))
    assert blockdrop(_adapt(trained, cifar_root, tmp_path, "--threshold", "0.4", "--epochs", "1")) == 0
    assert blockdrop(_adapt(trained, cifar_root, tmp_path, "--threshold", "0.6", "--epochs", "1")) == 2
    assert "threshold: 0.4 -> 0.6" in capsys.readouterr().err


SHIPPED = Path(__file__).resolve().parents[2] / "models" / "checkpoints"


@pytest.mark.parametrize(
    "options, said",
    [
        (["--limit", "-5"], "argument --limit: must be at least 1, got -5"),
        (["--limit", "0"], "argument --limit: must be at least 1, got 0"),  # it evaluated the whole split
        (["--threshold", "2"], "argument --threshold: a policy threshold is between 0 and 1 (exclusive), got 2.0"),
        (["--sweep", "0.5,abc"], "argument --sweep: expected a number, got 'abc'"),
        (["--val-size", "0"], "argument --val-size: must be at least 1, got 0"),
    ],
)
def test_eval_refuses_a_bad_value_naming_its_flag(cifar_root, capsys, options, said):
    with pytest.raises(SystemExit) as refused:
        _eval(SHIPPED / "cifar10-resnet32-blockdrop", cifar_root, *options)
    assert refused.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == f"blockdrop eval: error: {said}"


def test_training_refusals_are_one_line_before_any_work(cifar_root, trained, tmp_path):
    data = ["--data-root", str(cifar_root), *TINY]
    biglittle = str(SHIPPED / "cifar10-blresnet")
    for command in (["policy", "--backbone"], ["finetune", "--model"], ["slim", "--backbone"]):
        said = refusal(["train", *command, biglittle, "--run-dir", str(tmp_path / command[0]), *data])
        assert f"{command[1]} takes a ResNet or BlockDrop artifact, not a biglittle" in said  # was an AttributeError
    plain = ["train", "finetune", "--model", str(trained / "bb-artifact"), "--from-threshold", "0.5"]
    assert "has no policy: --from-threshold recenters" in refusal([*plain, "--run-dir", str(tmp_path / "ft"), *data])
    partial = ["eval", str(trained / "ft-artifact"), "--data-root", str(cifar_root), "--limit", "10", "--record"]
    assert "--limit evaluates part of it" in refusal(partial)
    # a run folder of another model: the settings agree, the weights do not fit (was a state_dict traceback)
    assert blockdrop(_backbone(cifar_root, tmp_path, epochs=1, name="run")) == 0
    deeper = [w if w != "8" else "20" for w in _backbone(cifar_root, tmp_path, epochs=1, name="run")]
    assert "holds a run of another model or command" in refusal(deeper)
