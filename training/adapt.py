"""``blockdrop train adapt``: fit the backbone to its trained policy's own masks, the policy frozen.

Joint finetuning trains the backbone on *sampled* masks (the policy explores, alpha = 0.8) at a small constant
Adam rate, while the service runs the *greedy* masks at one threshold. This stage closes that gap: the policy is
frozen, every training image runs exactly the blocks the policy keeps for it at ``--threshold`` (as served), and
the backbone is trained on those masks with the supervised loop (one-cycle SGD, distillation from a full
network if given). Since the policy does not change, neither do the masks nor the FLOPs per image: the stage
buys accuracy at a cost fixed before it starts. The threshold becomes the artifact's default.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from models import load_artifact
from models.blockdrop import BlockDropModel, run_backbone
from models.policy import PolicyNet
from models.resnet import FlatResNet
from training.backbone import fit_config_from_args, teacher_from_args
from training.checkpoint import RunFolder
from training.data import Normalizer, load_training_split
from training.distill import distillation_record
from training.evaluate import evaluate_blockdrop
from training.loop import fit


class PolicyMaskedBackbone(nn.Module):
    """The backbone run on the frozen policy's greedy masks, in training and evaluation alike."""

    def __init__(self, backbone: FlatResNet, policy: PolicyNet, threshold: float):
        super().__init__()
        self.backbone = backbone
        self.policy = policy.eval().requires_grad_(False)
        self.threshold = threshold

    def train(self, mode: bool = True) -> PolicyMaskedBackbone:
        super().train(mode)
        self.policy.eval()  # its BatchNorm statistics stay those the served masks come from
        return self

    def keep_mask(self, x: Tensor) -> Tensor:
        # in fp32 whatever the loop's autocast: the masks must be the ones the service computes
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            return self.policy(x.float()) >= self.threshold

    def forward(self, x: Tensor) -> Tensor:
        return run_backbone(self.backbone, x, self.keep_mask(x))


def load_blockdrop(path: str) -> BlockDropModel:
    model = load_artifact(path)
    if getattr(model, "policy", None) is None:
        raise ValueError(f"{path}: train adapt needs a BlockDrop artifact (with a policy), not a {model.manifest.kind}")
    return model


def train_adapt(args: argparse.Namespace) -> int:
    model = load_blockdrop(args.model)
    manifest = model.manifest
    threshold = args.threshold if args.threshold is not None else manifest.threshold
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"--threshold must be in (0, 1), got {threshold}")
    if manifest.input.mean is None:
        raise ValueError(f"{args.model}: train adapt needs a model trained here (mean/std-normalised input)")
    train, val = load_training_split(args)
    if list(manifest.classes) != list(train.classes):
        raise ValueError(f"{args.model}: its classes are not those of --dataset {args.dataset}")
    normalize = Normalizer(manifest.input.mean, manifest.input.std)
    torch.manual_seed(args.seed)
    masked = PolicyMaskedBackbone(model.backbone, model.policy, threshold)
    history = fit(
        masked,
        train,
        val,
        normalize,
        fit_config_from_args(args),
        RunFolder(args.run_dir),
        teacher=teacher_from_args(args, train.classes),
        description="adapt",
        device=args.device,
        run_settings={"model": manifest.name, "threshold": threshold},
    )
    if args.out:
        from training.export import export_blockdrop

        model = BlockDropModel(masked.backbone, masked.policy, manifest.input.size)
        figures = evaluate_blockdrop(model, val, normalize, threshold=threshold)
        history[-1] |= {f"val_{k}": v for k, v in figures.items()}
        extra = distillation_record(args) | {"threshold": threshold}
        export_blockdrop(model, manifest, args, history, stage="adapt", extra=extra, threshold=threshold)
    return 0
