"""The policy-gradient pieces of BlockDrop training (Wu et al., 2018, section 3).

Actions are sampled from Bernoulli(alpha * p + (1 - alpha) * (1 - p)); the reward is 1 - (blocks used / K)^2
for a right prediction and -gamma for a wrong one; the baseline is the reward of the greedy (thresholded)
mask, so the advantage is self-critical. During the curriculum only the last ``released`` blocks are decided by
the policy; the others are forced on and masked out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Bernoulli


def block_reward(correct: Tensor, keep_mask: Tensor, penalty: float) -> Tensor:
    """[N] rewards: 1 - (used / K)^2 where the prediction is right, -penalty where it is wrong."""
    usage = keep_mask.float().mean(1)
    return torch.where(correct, 1.0 - usage.pow(2), torch.full_like(usage, -penalty))


def curriculum_learnable(num_blocks: int, released: int, device: torch.device | None = None) -> Tensor:
    """[K] bool: which blocks the policy decides when the last ``released`` blocks are released."""
    learnable = torch.zeros(num_blocks, dtype=torch.bool, device=device)
    learnable[max(num_blocks - released, 0) :] = True
    return learnable


@dataclass(frozen=True)
class PolicyActions:
    sampled: Tensor  # [N, K] bool, what the backbone runs for the policy-gradient sample
    greedy: Tensor  # [N, K] bool, the thresholded baseline
    distribution: Bernoulli
    learnable: Tensor  # [K] bool


def sample_actions(probabilities: Tensor, alpha: float, released: int, threshold: float = 0.5) -> PolicyActions:
    bounded = alpha * probabilities + (1 - alpha) * (1 - probabilities)
    distribution = Bernoulli(probs=bounded)
    learnable = curriculum_learnable(probabilities.shape[1], released, probabilities.device)
    forced = ~learnable
    sampled = distribution.sample().bool() | forced
    greedy = (probabilities.detach() >= threshold) | forced
    return PolicyActions(sampled, greedy, distribution, learnable)


def policy_gradient_loss(actions: PolicyActions, advantage: Tensor, entropy_weight: float) -> Tensor:
    """REINFORCE with the self-critical advantage, over learnable blocks only, minus an entropy bonus."""
    log_prob = actions.distribution.log_prob(actions.sampled.float())
    learnable = actions.learnable.float()
    reinforce = -(log_prob * advantage.unsqueeze(1) * learnable).sum(1)
    entropy = (actions.distribution.entropy() * learnable).sum(1)
    return (reinforce - entropy_weight * entropy).mean()
