"""``blockdrop train policy`` (frozen backbone, curriculum by default) and ``blockdrop train finetune`` (joint).

Both run the same epoch loop: sample masks from the policy, run the backbone with the executor (which skips
the dropped blocks, so training gets cheaper as the policy learns to drop), reward, update. Finetuning also
trains the backbone with cross-entropy on the sampled masks. Resumable from the run folder after any epoch.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from models.blockdrop import BlockDropModel, run_backbone
from models.policy import PolicyConfig, PolicyNet
from training.backbone import load_resnet_family
from training.checkpoint import RunFolder
from training.data import ImageSet, Normalizer, iterate_batches, load_training_split
from training.distill import distill_settings, distillation_record, load_teacher, supervised_loss
from training.epochs import EpochDriver, training_batches
from training.evaluate import evaluate_blockdrop
from training.loop import POSTFIX_EVERY, autocast, resolve_bf16
from training.reinforce import PolicyActions, block_reward, policy_gradient_loss, sample_actions


@dataclass(frozen=True)
class PolicyTrainConfig:
    epochs: int
    joint: bool  # finetune the backbone too
    curriculum: bool  # release one more block (from the last backwards) each epoch
    batch_size: int = 256
    lr: float = 1e-3
    policy_lr: float | None = None  # joint training: the policy's own rate (default: lr)
    alpha: float = 0.8
    penalty: float = 5.0  # gamma: a wrong prediction is rewarded -gamma
    entropy_weight: float = 0.1
    backbone_masks: str = "sampled"  # joint training: "greedy" trains the backbone on the masks it will serve
    distill_weight: float = 0.0  # joint training with a teacher: (1 - w) CE + w KD
    distill_temperature: float = 4.0
    bf16: bool = True
    seed: int = 0
    max_batches: int | None = None


def released_blocks(config: PolicyTrainConfig, epoch: int, num_blocks: int) -> int:
    return min(epoch + 1, num_blocks) if config.curriculum else num_blocks


def train_blockdrop(
    model: BlockDropModel,
    train: ImageSet,
    val: ImageSet,
    normalize: Normalizer,
    config: PolicyTrainConfig,
    run: RunFolder,
    teacher: nn.Module | None = None,
    device: torch.device | str = "cpu",
) -> list[dict]:
    """Train in place on ``device``, resuming from ``run``; ``teacher`` (a full network, joint training only) is
    distilled into the backbone's sampled-mask predictions. The model ends on the CPU."""
    model.to(device)
    if teacher is not None:
        teacher.eval().requires_grad_(False).to(device)
    torch.manual_seed(config.seed)
    groups = [{"params": list(model.policy.parameters()), "lr": config.policy_lr or config.lr}]
    if config.joint:
        groups.append({"params": list(model.backbone.parameters()), "lr": config.lr})
    optimizer = torch.optim.Adam(groups, lr=config.lr)
    steps = PolicySteps(model, train, normalize.to(device), config, optimizer, torch.device(device), teacher)
    driver = EpochDriver(
        run,
        config.epochs,
        config.seed,
        "finetune" if config.joint else "policy",
        settings=asdict(config),
        state={"policy": model.policy, "backbone": model.backbone, "optimizer": optimizer},
    )
    history = driver.drive(
        steps.train_epoch,
        lambda epoch: _validate(model, val, steps.normalize, config, steps.released(epoch), steps.device),
        annotate=lambda epoch: {"released": steps.released(epoch)},
    )
    model.eval().to("cpu")
    if teacher is not None:
        teacher.to("cpu")
    return history


@dataclass
class PolicySteps:
    """One REINFORCE epoch: sample masks from the policy, run the backbone on them (the executor skips the dropped
    blocks), reward against the greedy masks' baseline, update the policy (and the backbone when joint)."""

    model: BlockDropModel
    train: ImageSet
    normalize: Normalizer  # already on the training device
    config: PolicyTrainConfig
    optimizer: torch.optim.Optimizer
    device: torch.device
    teacher: nn.Module | None = None

    def released(self, epoch: int) -> int:
        return released_blocks(self.config, epoch, self.model.num_blocks)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        model, config, device = self.model, self.config, self.device
        model.policy.train()
        model.backbone.train(config.joint)  # a frozen backbone keeps its BatchNorm statistics
        steps, batches = training_batches(self.train, config.batch_size, config.seed, epoch, config.max_batches)
        released = self.released(epoch)
        totals = {name: torch.zeros((), device=device) for name in ("reward", "accuracy", "blocks")}
        seen = 0
        with tqdm(total=steps, desc=f"epoch {epoch + 1} ({released} released)", leave=False, mininterval=5) as bar:
            for step, (images, labels) in enumerate(batches):
                x = self.normalize(images.to(device, non_blocking=True))
                labels = labels.to(device, non_blocking=True)
                reward, sampled_right, actions = self._step(x, labels, released)
                seen += len(labels)
                totals["reward"] += reward.sum().detach()
                totals["accuracy"] += sampled_right.sum()
                totals["blocks"] += actions.sampled.float().sum()
                bar.update()
                if step % POSTFIX_EVERY == 0:  # reading the statistics waits for the device
                    reward_mean, blocks_mean = totals["reward"].item() / seen, totals["blocks"].item() / seen
                    bar.set_postfix(reward=f"{reward_mean:.3f}", blocks=f"{blocks_mean:.2f}", refresh=False)
        return {k: v.item() / seen for k, v in totals.items()}

    def _step(self, x: Tensor, labels: Tensor, released: int) -> tuple[Tensor, Tensor, PolicyActions]:
        model, config = self.model, self.config
        with autocast(config.bf16, x.device):
            probabilities = model.policy(x).float()
        actions = sample_actions(probabilities, config.alpha, released)
        # the backbone learns on one of the two mask sets (when joint); the other only feeds the reward
        learn_on_greedy = config.joint and config.backbone_masks == "greedy"
        with torch.set_grad_enabled(learn_on_greedy), autocast(config.bf16, x.device):
            greedy_logits = run_backbone(model.backbone, x, actions.greedy).float()
        if learn_on_greedy:  # reward only: BatchNorm's running statistics stay those of the served masks
            model.backbone.eval()
        with torch.set_grad_enabled(config.joint and not learn_on_greedy), autocast(config.bf16, x.device):
            sampled_logits = run_backbone(model.backbone, x, actions.sampled).float()
        model.backbone.train(config.joint)
        sampled_right = sampled_logits.argmax(1) == labels
        reward = block_reward(sampled_right, actions.sampled, config.penalty)
        baseline = block_reward(greedy_logits.argmax(1) == labels, actions.greedy, config.penalty)
        loss = policy_gradient_loss(actions, reward - baseline, config.entropy_weight)
        if config.joint:
            teacher_logits = None
            if self.teacher is not None:
                with torch.no_grad(), autocast(config.bf16, x.device):
                    teacher_logits = self.teacher(x).float()
            learned = greedy_logits if learn_on_greedy else sampled_logits
            loss = loss + supervised_loss(
                learned, labels, teacher_logits, config.distill_weight, config.distill_temperature
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return reward, sampled_right, actions


@torch.no_grad()
def _validate(
    model: BlockDropModel, val: ImageSet, normalize: Normalizer, config: PolicyTrainConfig, released: int, device
) -> dict[str, float]:
    """Greedy masks with the curriculum's forced blocks, as training sees them; after it, the plain policy."""
    if released >= model.num_blocks:
        return evaluate_blockdrop(model, val, normalize, device=device)
    return _validate_curriculum(model, val, normalize, config, released, device)


@torch.no_grad()
def _validate_curriculum(model, val, normalize, config, released, device) -> dict[str, float]:
    model.eval()
    correct, blocks = torch.zeros((), device=device), torch.zeros((), device=device)  # read once, at the end
    for images, labels in iterate_batches(val, 500, shuffle=False, augment=False):
        x = normalize(images.to(device))
        actions = sample_actions(model.policy(x), config.alpha, released)
        correct += (run_backbone(model.backbone, x, actions.greedy).argmax(1) == labels.to(device)).sum()
        blocks += actions.greedy.sum()
    return {"accuracy": correct.item() / len(val), "blocks_mean": blocks.item() / len(val)}


def _config_from_args(args: argparse.Namespace, joint: bool) -> PolicyTrainConfig:
    return PolicyTrainConfig(
        epochs=args.epochs,
        joint=joint,
        curriculum=not joint and getattr(args, "curriculum", True),
        batch_size=args.batch_size,
        lr=args.lr,
        policy_lr=getattr(args, "policy_lr", None),
        backbone_masks=getattr(args, "backbone_masks", "sampled"),
        alpha=args.alpha,
        penalty=args.penalty,
        entropy_weight=args.entropy_weight,
        **distill_settings(args),
        bf16=resolve_bf16(args.bf16, args.device),
        seed=args.seed,
        max_batches=args.max_batches,
    )


def _normalizer_of(manifest) -> Normalizer:
    return Normalizer(manifest.input.mean, manifest.input.std)


def train_policy(args: argparse.Namespace) -> int:
    """Curriculum stage: a new policy over a frozen backbone artifact."""
    backbone_model = load_resnet_family(args.backbone, "--backbone")
    manifest = backbone_model.manifest
    torch.manual_seed(args.seed)
    policy = PolicyNet(PolicyConfig("cifar", backbone_model.num_blocks, args.policy_downsample))
    if args.initial_keep is not None:
        _start_keeping(policy, args.initial_keep)
    model = BlockDropModel(backbone_model.backbone, policy, manifest.input.size)
    return _train_and_export(model, manifest, args, joint=False)


def _log_odds(probability: float, option: str) -> float:
    """logit(``probability``), the policy's output bias for it; ``option`` names the flag it came from."""
    if not 0 < probability < 1:
        raise ValueError(f"{option} must lie strictly between 0 and 1, got {probability}")
    return math.log(probability / (1 - probability))


def _start_keeping(policy: PolicyNet, keep: float) -> None:
    """Bias the policy's output so that every block starts out kept with probability ``keep``."""
    bias = _log_odds(keep, "--initial-keep")
    with torch.no_grad():
        policy.logit.bias.fill_(bias)


def recenter(policy: PolicyNet, threshold: float) -> None:
    """Shift the policy's output so that its masks at ``threshold`` become its masks at 0.5: p >= t exactly where
    logit(p) - logit(t) >= 0. Joint training's greedy baseline and validation threshold at 0.5, and its samples
    then spread around the masks the backbone was adapted to."""
    shift = _log_odds(threshold, "--from-threshold")
    with torch.no_grad():
        policy.logit.bias.sub_(shift)


def finetune(args: argparse.Namespace) -> int:
    """Joint stage: policy and backbone trained together, from a BlockDrop artifact (the curriculum's output) or
    from a plain backbone artifact with a new policy that starts out keeping each block with ``--initial-keep``."""
    model = load_resnet_family(args.model, "--model")
    manifest = model.manifest
    if model.policy is None and args.from_threshold is not None:
        raise ValueError(
            f"{args.model} has no policy: --from-threshold recenters a trained one (a new one uses --initial-keep)"
        )
    if model.policy is None:
        torch.manual_seed(args.seed)
        policy = PolicyNet(PolicyConfig("cifar", model.num_blocks, args.policy_downsample))
        _start_keeping(policy, args.initial_keep)
        model = BlockDropModel(model.backbone, policy, manifest.input.size)
    if args.from_threshold is not None:
        recenter(model.policy, args.from_threshold)
    teacher = load_teacher(args.distill_from, manifest.input, manifest.classes) if args.distill_from else None
    return _train_and_export(model, manifest, args, joint=True, teacher=teacher)


def _train_and_export(
    model: BlockDropModel, manifest, args: argparse.Namespace, joint: bool, teacher: nn.Module | None = None
) -> int:
    train, val = load_training_split(args)
    normalize = _normalizer_of(manifest)
    run = RunFolder(args.run_dir)
    config = _config_from_args(args, joint)
    history = train_blockdrop(model, train, val, normalize, config, run, teacher, device=args.device)
    if args.out:
        from training.export import export_blockdrop

        extra = distillation_record(args)
        export_blockdrop(model, manifest, args, history, stage="finetune" if joint else "policy", extra=extra)
    return 0
