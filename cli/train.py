"""``blockdrop train {backbone,policy,finetune,adapt,slim,biglittle}``."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

from cli import arg_types
from cli.help_format import DefaultsInHelp
from training.data import DATA_ROOT_ENV


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help=f"folder holding cifar-10-batches-py (default: ${DATA_ROOT_ENV})")
    parser.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10", help="which CIFAR")
    parser.add_argument("--download", action="store_true", help="download the dataset with torchvision if missing")
    parser.add_argument(
        "--run-dir", required=True, help="run folder: checkpoint each epoch, log.jsonl; rerun to resume"
    )
    parser.add_argument("--out", help="artifact folder to write when training ends")
    parser.add_argument("--val-size", type=int, default=5000, help="validation images held out of the training set")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, the weights and the data order")
    parser.add_argument("--batch-size", type=arg_types.positive_int, default=128, help="images per optimiser step")
    parser.add_argument("--max-batches", type=arg_types.positive_int, help="cap batches per epoch (smoke tests)")
    parser.add_argument(
        "--train-subset", type=arg_types.positive_int, help="train on only this many images (smoke tests)"
    )
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="bf16 autocast (default: on where the CPU computes bf16 natively, AVX-512 BF16 or AMX; elsewhere "
        "it is emulated and many times slower than fp32)",
    )
    parser.add_argument("--threads", type=arg_types.positive_int, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--device", default="cpu", help="where to train: cpu, cuda or cuda:N")


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    commands = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    for what, (help_text, add_options, module, function) in _COMMANDS.items():
        command = commands.add_parser(what, help=help_text, description=help_text, formatter_class=DefaultsInHelp)
        add_common_options(command)
        add_options(command)
        command.set_defaults(handler=_run(module, function))


def add_schedule_options(parser: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    """The one-cycle SGD schedule every supervised stage shares."""
    parser.add_argument(
        "--epochs", type=arg_types.positive_int, default=epochs, help="epochs of the one-cycle schedule"
    )
    parser.add_argument("--lr", type=float, default=lr, help="peak of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")


def add_policy_downsample_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--policy-downsample", type=int, default=2, choices=[1, 2], help=help_text)


def _backbone_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depth", type=int, default=32, help="6n+2: 8, 20, 32, 56, 110 (from scratch)")
    parser.add_argument(
        "--init-from", metavar="ARTIFACT", help="start from this ResNet artifact's weights (and depth) instead"
    )
    parser.add_argument(
        "--random-drop",
        type=float,
        metavar="MIN_KEEP",
        help="stochastic depth per image: each training image keeps each block with a probability drawn "
        "from U[MIN_KEEP, 1], so that the network tolerates the blocks a BlockDrop policy will drop",
    )
    add_schedule_options(parser, epochs=60, lr=0.2)
    add_distill_options(parser, "during the whole training")


def _policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", required=True, help="artifact of the backbone (kind resnet)")
    add_policy_downsample_option(parser, "average-pool the image by this factor before the policy (2: 4x cheaper)")
    parser.add_argument(
        "--curriculum",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="release one block per epoch, from the last (--no-curriculum: the policy decides every block from "
        "the first epoch)",
    )
    parser.add_argument(
        "--initial-keep",
        type=float,
        help="the keep-probability every block starts with (default: the policy network's own initialisation)",
    )
    add_reinforce_options(parser, epochs=25, lr=1e-3)


def _finetune_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="BlockDrop artifact from 'train policy', or a backbone artifact to start a new policy",
    )
    parser.add_argument("--policy-lr", type=float, help="the policy's learning rate (default: --lr)")
    add_policy_downsample_option(parser, "for a new policy: average-pool the image by this factor first")
    parser.add_argument(
        "--initial-keep", type=float, default=0.9, help="for a new policy: the keep-probability every block starts with"
    )
    parser.add_argument(
        "--from-threshold",
        type=float,
        metavar="T",
        help="start from the masks the artifact's policy gives at threshold T (e.g. after 'train adapt' at T): "
        "its output is shifted so that they are its masks at 0.5, where the joint stage samples, rewards and "
        "validates",
    )
    parser.add_argument(
        "--backbone-masks",
        choices=("sampled", "greedy"),
        default="sampled",
        help="the masks the backbone learns on: the policy's samples (the paper), or the greedy masks it serves, "
        "as 'train adapt' does, while the policy still learns from its samples (default: sampled)",
    )
    add_distill_options(parser, "on every sampled mask (e.g. the backbone the model started from)")
    add_reinforce_options(parser, epochs=10, lr=1e-4)


def _adapt_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="BlockDrop artifact (from 'train finetune')")
    parser.add_argument(
        "--threshold",
        type=float,
        help="the policy threshold to adapt to and serve at; it fixes the masks and FLOPs (default: the artifact's)",
    )
    add_schedule_options(parser, epochs=10, lr=0.02)
    add_distill_options(parser, "on the policy's masks (e.g. the full network)")


def _slim_options(parser: argparse.ArgumentParser) -> None:
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--backbone", help="start from this trained backbone artifact (default: from scratch)")
    start.add_argument(
        "--continue-from",
        metavar="SLIM_ARTIFACT",
        help="fine-tune an already pruned artifact for --finetune-epochs more (a new one-cycle), skipping the "
        "sparsity and pruning stages; its provenance keeps the earlier stages",
    )
    parser.add_argument("--depth", type=int, default=32, help="depth when training from scratch")
    parser.add_argument("--percent", type=float, default=0.4, help="fraction of inner channels to remove")
    parser.add_argument("--sparsity", type=float, default=1e-4, help="lambda of the L1 penalty on BN scales")
    parser.add_argument("--min-channels", type=int, default=2, help="never prune a block below this width")
    parser.add_argument("--sparsity-epochs", type=int, default=20, help="epochs with the L1 penalty")
    parser.add_argument("--finetune-epochs", type=int, default=20, help="epochs of fine-tuning after pruning")
    parser.add_argument("--lr", type=float, default=0.1, help="one-cycle peak for the sparsity stage")
    parser.add_argument("--finetune-lr", type=float, default=0.05, help="one-cycle peak for fine-tuning")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")
    add_distill_options(parser, "in the fine-tuning stage (e.g. the unpruned backbone)")


def _biglittle_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--init-from",
        metavar="ARTIFACT",
        help="go on from this bL-ResNet artifact's weights and shape (then --blocks, --alpha, --beta, --plain-stages "
        "are refused)",
    )
    parser.add_argument(
        "--blocks",
        type=int,
        nargs=3,
        metavar="K",
        help="blocks per stage (big branch K-1, little branch K/beta-1 (at least 1), one fusion block); "
        "default: 10 10 10",
    )
    parser.add_argument("--alpha", type=int, help="little-branch width divisor; default: 2")
    parser.add_argument("--beta", type=int, help="little-branch depth divisor; default: 4")
    parser.add_argument(
        "--plain-stages",
        type=int,
        choices=(0, 1),
        help="1 keeps the last stage a plain ResNet stage, as the ImageNet bL-ResNet keeps its 7x7 one; default: 0",
    )
    add_schedule_options(parser, epochs=60, lr=0.2)
    add_distill_options(parser, "during the whole training")


# what -> (help, its own options, module, function taking the parsed arguments)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str, str]] = {
    "backbone": (
        "train a CIFAR ResNet, from scratch or from a trained one",
        _backbone_options,
        "training.backbone",
        "train_backbone",
    ),
    "policy": (
        "curriculum-train a policy over a frozen backbone artifact",
        _policy_options,
        "training.policy",
        "train_policy",
    ),
    "finetune": (
        "jointly finetune the policy and backbone of a BlockDrop artifact",
        _finetune_options,
        "training.policy",
        "finetune",
    ),
    "adapt": (
        "fit a BlockDrop artifact's backbone to its frozen policy's masks at one threshold",
        _adapt_options,
        "training.adapt",
        "train_adapt",
    ),
    "slim": ("Network Slimming: sparsity training, pruning, fine-tuning", _slim_options, "training.slim", "train_slim"),
    "biglittle": (
        "train a CIFAR Big-Little ResNet, from scratch or from a trained one",
        _biglittle_options,
        "training.biglittle",
        "train_biglittle",
    ),
}


def add_distill_options(parser: argparse.ArgumentParser, when: str) -> None:
    parser.add_argument(
        "--distill-from",
        metavar="ARTIFACT",
        help=f"a trained full network whose softened predictions the model also learns, {when}",
    )
    parser.add_argument("--distill-weight", type=float, default=0.5, help="w in (1 - w) CE + w KD")
    parser.add_argument("--distill-temperature", type=float, default=4.0, help="T: softens both distributions")


def add_reinforce_options(parser: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    parser.add_argument(
        "--epochs", type=arg_types.positive_int, default=epochs, help="epochs (--curriculum: one block released each)"
    )
    parser.add_argument("--lr", type=float, default=lr, help="Adam learning rate")
    parser.add_argument("--alpha", type=float, default=0.8, help="bounds the sampling probabilities away from 0 and 1")
    parser.add_argument("--penalty", type=float, default=5.0, help="gamma: a wrong prediction is rewarded -gamma")
    parser.add_argument("--entropy-weight", type=float, default=0.1, help="bonus for the policy's entropy")
    parser.set_defaults(batch_size=256)


def _run(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        import torch

        from models.device import resolve_device

        if args.threads:
            torch.set_num_threads(args.threads)
        resolve_device(args.device)  # a plain refusal now rather than a CUDA error after the data is read
        status = getattr(importlib.import_module(module), function)(args)
        if status == 0:
            if args.out:
                print(f"wrote the artifact {args.out}")
            else:  # said, not left to be found out: the run folder holds a checkpoint, not an artifact
                print(f"no --out: no artifact written; the command again with --out DIR writes it from {args.run_dir}")
        return status

    return handler
