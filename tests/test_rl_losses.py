"""The losses (rl/algorithms/losses.py): values on hand-computed cases and the direction of one SGD step on free logits."""

from __future__ import annotations

import math

import pytest
import torch

from rl.algorithms.losses import (
    clipped_surrogate_loss,
    cloud_alignment_loss,
    dpo_loss,
    dpo_pairs_from_groups,
    k3_kl,
    kl_penalty,
    masked_sample_mean,
    masked_sample_sum,
    mean_of_sample_means,
    nll_loss,
    spa_loss,
)

VOCAB = 7


def free_token_logprobs(seed: int, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Leaf logits (N, T, V) and the target token ids (N, T): each position's log-prob depends on its own logits."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, VOCAB, generator=generator).requires_grad_()
    targets = torch.randint(VOCAB, shape, generator=generator)
    return logits, targets


def gather(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)


def sgd_step(logits: torch.Tensor, loss: torch.Tensor, lr: float = 0.1) -> None:
    loss.backward()
    with torch.no_grad():
        logits -= lr * logits.grad
        logits.grad = None


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_reductions_mean_tokens_per_sample_then_samples():
    values = torch.tensor([[1.0, 3.0, 100.0], [4.0, float("-inf"), float("nan")], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert masked_sample_sum(values, mask).tolist() == [4.0, 4.0, 0.0]
    assert masked_sample_mean(values, mask).tolist() == [2.0, 4.0, 0.0]
    assert mean_of_sample_means(values, mask).item() == 3.0  # the sample without tokens is left out


def test_surrogate_value_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0]])
    old = torch.tensor([[-1.0, -2.5, -0.2], [-0.3, -0.1, 0.0]])
    advantages = torch.tensor([[1.0, 2.0, -1.0], [-3.0, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, stats = clipped_surrogate_loss(logprobs, old, advantages, mask, clip_eps=0.2)
    ratios = [[1.0, math.exp(0.5), math.exp(-0.3)], [1.0, math.exp(-0.6)]]
    advs = [[1.0, 2.0, -1.0], [-3.0, 0.5]]
    per_token = [
        [-min(r * a, min(max(r, 0.8), 1.2) * a) for r, a in zip(row_r, row_a)] for row_r, row_a in zip(ratios, advs)
    ]
    expected = sum(sum(row) / len(row) for row in per_token) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # clipped: token (0, 1) (ratio 1.65 > 1.2, A > 0) and token (0, 2) (ratio 0.74 < 0.8, A < 0); (1, 1) is not
    # (ratio 0.55 < 0.8 but A > 0: the unclipped term is the smaller one)
    assert stats["clip_fraction"] == pytest.approx(2 / 5)
    assert stats["approx_kl"] == pytest.approx((0 - 0.5 + 0.3 + 0 + 0.6) / 5, rel=1e-6)
    assert stats["ratio_mean"] == pytest.approx(sum(map(sum, ratios)) / 5, rel=1e-6)


def test_surrogate_step_raises_positive_and_lowers_negative_advantage_tokens():
    logits, targets = free_token_logprobs(0, (3, 5))
    advantages = torch.tensor([[1.0, -1.0, 0.5, 0.0, 2.0], [-2.0, 1.0, 1.0, -0.5, 3.0], [1.0, 1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(3, 5)
    mask[1, 4] = 0
    before = gather(logits, targets).detach()
    loss, _ = clipped_surrogate_loss(gather(logits, targets), before, advantages, mask, clip_eps=0.2)
    sgd_step(logits, loss)
    change = gather(logits, targets).detach() - before
    on = mask.bool()
    assert (change[on & (advantages > 0)] > 0).all()
    assert (change[on & (advantages < 0)] < 0).all()
    assert torch.equal(change[~on | (advantages == 0)], torch.zeros(int((~on | (advantages == 0)).sum())))


def test_clipping_stops_the_gradient_outside_the_trust_region():
    logits, targets = free_token_logprobs(1, (1, 4))
    logprobs = gather(logits, targets)
    # ratios e^0.5 (A > 0: clipped), e^-0.5 (A < 0: clipped), e^0.1 (inside), e^0.5 (A < 0: the unclipped term is
    # the smaller one, so it keeps its gradient)
    old = logprobs.detach() - torch.tensor([[0.5, -0.5, 0.1, 0.5]])
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = clipped_surrogate_loss(logprobs, old, advantages, mask, clip_eps=0.2)
    loss.backward()
    grad = logits.grad.abs().sum(-1)[0]
    assert grad[0] == 0 and grad[1] == 0 and grad[2] > 0 and grad[3] > 0
    assert stats["clip_fraction"] == pytest.approx(2 / 4)
    logits.grad = None
    loss, stats = clipped_surrogate_loss(
        gather(logits, targets), old, advantages, mask, clip_eps=0.2, clip_eps_high=0.7
    )
    loss.backward()
    grad = logits.grad.abs().sum(-1)[0]
    assert grad[0] > 0 and grad[1] == 0 and stats["clip_fraction"] == pytest.approx(1 / 4)  # 1.65 < 1 + 0.7


def test_k3_is_nonnegative_and_zero_at_equality():
    generator = torch.Generator().manual_seed(2)
    logprobs, ref = -torch.rand(4, 6, generator=generator) * 3, -torch.rand(4, 6, generator=generator) * 3
    mask = torch.ones(4, 6)
    mask[0, 3:] = 0
    kl = k3_kl(logprobs, ref, mask)
    assert (kl >= 0).all() and (kl[mask.bool()] > 0).all() and torch.equal(kl[~mask.bool()], torch.zeros(3))
    assert torch.equal(k3_kl(logprobs, logprobs, mask), torch.zeros(4, 6))
    r = (ref[1, 2] - logprobs[1, 2]).item()
    assert kl[1, 2].item() == pytest.approx(math.exp(r) - r - 1, rel=1e-3, abs=1e-7)
    penalty, stats = kl_penalty(logprobs, ref, mask, beta=0.05)
    assert penalty.item() == pytest.approx(0.05 * mean_of_sample_means(kl, mask).item(), rel=1e-6)
    assert stats["kl"] == pytest.approx(mean_of_sample_means(kl, mask).item(), rel=1e-6)
    assert kl_penalty(logprobs, ref, mask)[0].item() == 0.0  # beta 0 by default


def test_nll_is_the_token_mean_over_the_batch():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, float("-inf"), 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, stats = nll_loss(logprobs, mask)
    assert loss.item() == pytest.approx((1 + 2 + 3 + 4) / 4) and stats["tokens"] == 4.0


def test_spa_value_by_hand():
    clean = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
    masked = torch.tensor([[-1.5, -2.0, -9.0], [-0.2, -0.5, -0.6]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss, stats = spa_loss(clean, masked, mask, beta=1.0, nll_weight=0.0)
    margins = [(-3.0) - (-3.5), (-1.5) - (-1.3)]
    assert loss.item() == pytest.approx(sum(-math.log(sigmoid(m)) for m in margins) / 2, rel=1e-6)
    assert stats["accuracy"] == 0.5 and stats["margin"] == pytest.approx(sum(margins) / 2)
    anchored, stats = spa_loss(clean, masked, mask, beta=2.0, nll_weight=0.5)
    nll = (1 + 2 + 0.5 * 3) / 5
    assert anchored.item() == pytest.approx(sum(-math.log(sigmoid(2 * m)) for m in margins) / 2 + 0.5 * nll, rel=1e-6)
    assert stats["nll"] == pytest.approx(nll)


@pytest.mark.parametrize("nll_weight", [0.0, 1.0])
def test_spa_step_widens_the_clean_vs_masked_gap(nll_weight):
    clean_logits, targets = free_token_logprobs(3, (4, 6))
    masked_logits = torch.randn(4, 6, VOCAB, generator=torch.Generator().manual_seed(4)).requires_grad_()
    mask = torch.ones(4, 6)
    mask[2, 4:] = 0

    def margins() -> torch.Tensor:
        return masked_sample_sum(gather(clean_logits, targets) - gather(masked_logits, targets), mask).detach()

    before = margins()
    loss, _ = spa_loss(
        gather(clean_logits, targets), gather(masked_logits, targets), mask, beta=1.0, nll_weight=nll_weight
    )
    loss.backward()
    with torch.no_grad():
        for logits in (clean_logits, masked_logits):
            logits -= 0.1 * logits.grad
    assert (margins() > before).all()


def test_dpo_is_log2_at_equal_logprobs_and_matches_a_hand_case():
    equal = torch.tensor([-5.0, -2.0])
    loss, stats = dpo_loss(equal, equal, equal, equal, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2)) and stats["reward_margin"] == 0.0
    loss, stats = dpo_loss(
        torch.tensor([-4.0, -10.0]),
        torch.tensor([-6.0, -8.0]),
        torch.tensor([-5.0, -9.0]),
        torch.tensor([-5.0, -9.0]),
        beta=0.1,
    )
    margins = [0.1 * ((-4 + 5) - (-6 + 5)), 0.1 * ((-10 + 9) - (-8 + 9))]
    assert loss.item() == pytest.approx(sum(-math.log(sigmoid(m)) for m in margins) / 2, rel=1e-6)
    assert stats["accuracy"] == 0.5 and stats["reward_margin"] == pytest.approx(sum(margins) / 2)
    with pytest.raises(ValueError, match="four"):
        dpo_loss(equal, equal, equal, torch.zeros(3), beta=0.1)


def test_dpo_step_raises_chosen_and_lowers_rejected():
    logits, targets = free_token_logprobs(5, (2, 4))  # row 0 chosen, row 1 rejected
    mask = torch.ones(2, 4)
    before = masked_sample_sum(gather(logits, targets), mask).detach()
    sequence = masked_sample_sum(gather(logits, targets), mask)
    loss, _ = dpo_loss(sequence[:1], sequence[1:], before[:1], before[1:], beta=0.1)
    sgd_step(logits, loss, lr=1.0)
    after = masked_sample_sum(gather(logits, targets), mask).detach()
    assert after[0] > before[0] and after[1] < before[1]


def test_dpo_pairs_take_the_best_and_worst_valid_sample_of_each_group():
    totals = torch.tensor([[0.2, 0.9, 0.1, 0.9], [0.5, 0.5, 0.5, 0.5], [3.0, 1.0, 9.0, 0.0], [1.0, 2.0, 0.0, 0.0]])
    valid = torch.tensor([[True] * 4, [True] * 4, [True, True, False, False], [True, False, False, False]])
    assert dpo_pairs_from_groups(totals, valid) == [(1, 2), (8, 9)]  # ties: the first; invalid 9.0 and 0.0 ignored
    with pytest.raises(ValueError, match="prompts, group"):
        dpo_pairs_from_groups(totals, valid[:2])


def test_cloud_alignment_loss_is_zero_when_box_category_and_colour_are_right():
    box = torch.tensor([[-0.5, -0.2, -0.1, 0.5, 0.2, 0.1]])
    right = torch.cat([box, torch.tensor([[0.0, 50.0, 0.0]]), torch.tensor([[50.0, 0.0]])], dim=1)
    loss, info = cloud_alignment_loss(right, box, torch.tensor([1]), torch.tensor([0]), num_categories=3)
    assert loss.item() < 1e-6 and info["align_box_mse"] == 0.0
    wrong = right.clone()
    wrong[0, :6] += 0.1  # box off by 0.1 everywhere: 10 x MSE = 0.1
    loss, info = cloud_alignment_loss(wrong, box, torch.tensor([2]), torch.tensor([1]), num_categories=3)
    assert info["align_box_mse"] == pytest.approx(0.01, rel=1e-4) and info["align_category_ce"] == pytest.approx(50.0)
    assert loss.item() == pytest.approx(0.1 + 50.0 + 50.0, rel=1e-4)
    with pytest.raises(ValueError, match="do not fit"):
        cloud_alignment_loss(right[:, :9], box, torch.tensor([1]), torch.tensor([0]), num_categories=3)
