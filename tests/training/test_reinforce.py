import torch

from training.policy import PolicyTrainConfig, released_blocks
from training.reinforce import block_reward, curriculum_learnable, policy_gradient_loss, sample_actions


def test_reward_on_hand_made_cases():
    keep = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    correct = torch.tensor([True, True, True, False])
    reward = block_reward(correct, keep, penalty=5.0)
    assert torch.allclose(reward, torch.tensor([0.0, 0.75, 1.0, -5.0]))


def test_curriculum_releases_blocks_from_the_last_backwards():
    assert curriculum_learnable(5, 1).tolist() == [False, False, False, False, True]
    assert curriculum_learnable(5, 3).tolist() == [False, False, True, True, True]
    assert curriculum_learnable(5, 9).all()
    config = PolicyTrainConfig(epochs=20, joint=False, curriculum=True)
    assert [released_blocks(config, e, 15) for e in (0, 1, 14, 19)] == [1, 2, 15, 15]
    assert released_blocks(PolicyTrainConfig(epochs=3, joint=True, curriculum=False), 0, 15) == 15


def test_forced_blocks_are_on_and_out_of_the_loss():
    torch.manual_seed(0)
    probabilities = torch.full((64, 6), 0.1, requires_grad=True)
    actions = sample_actions(probabilities, alpha=0.8, released=2)
    assert actions.sampled[:, :4].all() and actions.greedy[:, :4].all()
    assert not actions.greedy[:, 4:].any()  # p = 0.1 < 0.5
    loss = policy_gradient_loss(actions, torch.randn(64), entropy_weight=0.1)
    loss.backward()
    assert torch.count_nonzero(probabilities.grad[:, :4]) == 0
    assert torch.count_nonzero(probabilities.grad[:, 4:]) > 0


def test_sampling_is_bounded_by_alpha():
    torch.manual_seed(0)
    actions = sample_actions(torch.zeros(20000, 1), alpha=0.8, released=1)
    assert abs(actions.sampled.float().mean().item() - 0.2) < 0.02


def test_positive_advantage_raises_the_probability_of_the_sampled_action():
    probabilities = torch.full((1, 1), 0.5, requires_grad=True)
    torch.manual_seed(1)
    actions = sample_actions(probabilities, alpha=1.0, released=1)
    policy_gradient_loss(actions, torch.ones(1), entropy_weight=0.0).backward()
    kept = actions.sampled.item()
    assert (probabilities.grad.item() < 0) == kept  # descending the loss moves p towards what was sampled
