"""Group standardization, GRCA routing and broadcast GRPO (rl/algorithms/advantages.py) against hand computations."""

from __future__ import annotations

import inspect
import math
import statistics

import pytest
import torch

from rl.algorithms.advantages import (
    ROUTED_FIELDS,
    advantage_stats,
    background_rewards_advantage,
    broadcast_advantages,
    group_standardize,
    only_varying,
    other_fields_credit,
    routed_advantages,
    routed_token_advantages,
)

EPS = 1e-6


def standardized(values: list[float]) -> list[float]:
    """The hand rule: (r - mean) / (sample std + eps)."""
    mean, std = statistics.mean(values), statistics.stdev(values)
    return [(v - mean) / (std + EPS) for v in values]


def test_each_group_is_standardized_by_its_own_mean_and_sample_std():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 0.0, 0.5]])
    out = group_standardize(rewards, torch.ones(2, 4, dtype=torch.bool))
    assert out.dtype == torch.float32
    assert torch.allclose(out[0], torch.tensor(standardized([1, 2, 3, 4])))
    assert torch.allclose(out[1], torch.tensor(standardized([0, 0.5, 0, 0.5])))
    assert math.isclose(out[0, 3].item(), 1.5 / math.sqrt(5 / 3), rel_tol=1e-5)


def test_flat_groups_and_lonely_samples_give_zero():
    rewards = torch.tensor([[0.1, 0.1, 0.1], [0.7, 0.2, 0.9], [5.0, 5.0, 2.0]])
    valid = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
    out = group_standardize(rewards, valid)
    assert torch.equal(out, torch.zeros(3, 3))  # all equal / one valid / valid ones equal


def test_missing_rewards_are_left_out_of_the_statistics_and_get_zero():
    rewards = torch.tensor([[1.0, float("nan"), 3.0, 8.0], [2.0, 4.0, -100.0, 6.0]])
    valid = torch.tensor([[True, False, True, True], [True, True, False, True]])
    out = group_standardize(rewards, valid)
    assert out[0, 1] == 0 and out[1, 2] == 0
    assert torch.allclose(out[0, [0, 2, 3]], torch.tensor(standardized([1, 3, 8])))
    assert torch.allclose(out[1, [0, 1, 3]], torch.tensor(standardized([2, 4, 6])))


def test_bad_inputs_are_named():
    valid = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="NaN or infinite"):
        group_standardize(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), valid)
    with pytest.raises(ValueError, match="2-D"):
        group_standardize(torch.ones(4), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool tensor"):
        group_standardize(torch.ones(2, 2), torch.ones(2, 2))


def test_background_is_format_plus_answer_plus_weighted_rpc():
    fmt = torch.tensor([[1.0, 1.0, 0.0]])
    answer = torch.tensor([[1.0, 0.0, 0.0]])
    rpc = torch.tensor([[0.9, 0.1, 0.5]])
    out = background_rewards_advantage(fmt, answer, rpc, torch.ones(1, 3, dtype=torch.bool), 0.15)
    expected = [b + 0.15 * r for b, r in zip(standardized([2, 1, 0]), standardized([0.9, 0.1, 0.5]))]
    assert torch.allclose(out[0], torch.tensor(expected))
    no_rpc = background_rewards_advantage(fmt, answer, rpc, torch.ones(1, 3, dtype=torch.bool), rpc_weight=0.0)
    assert torch.allclose(no_rpc[0], torch.tensor(standardized([2, 1, 0])))


def test_routing_puts_each_field_advantage_exactly_on_its_tokens():
    response_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    masks = {
        "bbox2d": torch.tensor([[0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool),
        "kpts3d": torch.tensor([[0, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0]], dtype=torch.bool),
    }
    field_adv = {"bbox2d": torch.tensor([0.5, -0.5]), "kpts3d": torch.tensor([2.0, -1.0])}
    background = torch.tensor([0.25, 0.75])
    out = routed_token_advantages(field_adv, masks, background, response_mask)
    expected = torch.tensor([[0.25, 0.5, 0.5, 2.0, 0.25, 0.0], [0.75, -1.0, 0.75, 0.0, 0.0, 0.0]])
    assert torch.equal(out, expected)


def test_overlapping_masks_are_refused_with_their_names():
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    with pytest.raises(ValueError, match="bbox3d and kpts3d overlap on 2 tokens"):
        routed_token_advantages(
            {"bbox3d": torch.ones(1), "kpts3d": torch.ones(1)},
            {"bbox3d": mask, "kpts3d": mask},
            torch.zeros(1),
            torch.ones(1, 3),
        )
    with pytest.raises(ValueError, match="background_advantage"):
        routed_token_advantages({}, {}, torch.zeros(2), torch.ones(1, 3))


def reward_table(groups: list[list[dict[str, float]]]) -> dict[str, torch.Tensor]:
    names = ("format", "answer", "rpc", *ROUTED_FIELDS)
    return {name: torch.tensor([[sample[name] for sample in group] for group in groups]) for name in names}


def test_routed_advantages_end_to_end_with_a_missing_sample():
    sample = dict.fromkeys(("format", "answer", "rpc", *ROUTED_FIELDS), 0.0)
    groups = [
        [
            sample | {"format": 1, "bbox3d": 0.9, "rpc": 0.8},
            sample | {"bbox3d": 0.1},
            sample | {"format": 1, "bbox3d": 0.5},
        ],
        [sample | {"kpts2d": 1.0}, sample | {"kpts2d": 0.0, "answer": 1}, sample | {"kpts2d": 0.5}],
    ]
    rewards = reward_table(groups)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    tokens = 5
    response_mask = torch.ones(6, tokens)
    response_mask[1, 4] = 0
    masks = {name: torch.zeros(6, tokens, dtype=torch.bool) for name in ROUTED_FIELDS}
    for row in range(6):
        masks["bbox3d"][row, 1] = masks["kpts2d"][row, 3] = True
    out = routed_advantages(rewards, valid, masks, response_mask, 0.15)

    bbox3d = standardized([0.9, 0.1, 0.5])
    background0 = [b + 0.15 * r for b, r in zip(standardized([1, 0, 1]), standardized([0.8, 0, 0]))]
    kpts2d1 = standardized([1.0, 0.0])
    background1 = standardized([0, 1])
    for g in range(3):
        assert out[g, 1].item() == pytest.approx(bbox3d[g], rel=1e-5)
        assert out[g, 3].item() == 0.0  # kpts2d is flat in group 0
        assert out[g, [0, 2]].tolist() == pytest.approx([background0[g]] * 2, rel=1e-5)
    for g in range(2):
        assert out[3 + g, 3].item() == pytest.approx(kpts2d1[g], rel=1e-5)
        assert out[3 + g, 1].item() == 0.0  # bbox3d is flat in group 1
        assert out[3 + g, [0, 2, 4]].tolist() == pytest.approx([background1[g]] * 3, rel=1e-5)
    assert out[1, 4] == 0  # padding
    assert torch.equal(out[5], torch.zeros(tokens))  # the missing sample


def test_routed_weights_scale_only_their_field():
    rewards = {name: torch.tensor([[0.0, 1.0]]) for name in ("format", "answer", "rpc", *ROUTED_FIELDS)}
    valid = torch.ones(1, 2, dtype=torch.bool)
    masks = {name: torch.zeros(2, 4, dtype=torch.bool) for name in ROUTED_FIELDS}
    masks["bbox2d"][:, 0] = masks["bbox3d"][:, 1] = True
    plain = routed_advantages(rewards, valid, masks, torch.ones(2, 4), 0.15)
    weighted = routed_advantages(rewards, valid, masks, torch.ones(2, 4), 0.15, routed_weights={"bbox3d": 2.0})
    assert torch.equal(weighted[:, 1], 2 * plain[:, 1])
    assert torch.equal(weighted[:, [0, 2, 3]], plain[:, [0, 2, 3]])
    with pytest.raises(ValueError, match=r"lacks \['kpts3d'\]"):
        routed_advantages(rewards, valid, {k: v for k, v in masks.items() if k != "kpts3d"}, torch.ones(2, 4), 0.15)


def test_fields_left_out_of_routing_join_the_background():
    # only kpts2d differs within the group; routing bbox3d alone, kpts2d's reward must still reach the tokens
    rewards = {name: torch.zeros(1, 3) for name in ("format", "answer", "rpc", *ROUTED_FIELDS)}
    rewards["kpts2d"] = torch.tensor([[1.0, 0.0, 0.5]])
    masks = {"bbox3d": torch.zeros(3, 4, dtype=torch.bool)}
    masks["bbox3d"][:, 1] = True
    out = routed_advantages(
        rewards, torch.ones(1, 3, dtype=torch.bool), masks, torch.ones(3, 4), 0.15, routed_fields=("bbox3d",)
    )
    expected = standardized([1.0, 0.0, 0.5])
    for g in range(3):
        assert out[g, [0, 2, 3]].tolist() == pytest.approx([expected[g]] * 3, rel=1e-5)
        assert out[g, 1].item() == 0.0  # bbox3d is flat


def test_a_routed_answer_leaves_the_background():
    rewards = {name: torch.zeros(1, 2) for name in ("format", "answer", "rpc", *ROUTED_FIELDS)}
    rewards["answer"] = torch.tensor([[1.0, 0.0]])
    masks = {name: torch.zeros(2, 3, dtype=torch.bool) for name in ("answer", *ROUTED_FIELDS)}
    masks["answer"][:, 0] = True
    out = routed_advantages(
        rewards,
        torch.ones(1, 2, dtype=torch.bool),
        masks,
        torch.ones(2, 3),
        0.15,
        routed_fields=("answer", *ROUTED_FIELDS),
    )
    assert out[:, 0].tolist() == pytest.approx(standardized([1.0, 0.0]), rel=1e-5)
    assert torch.equal(out[:, 1:], torch.zeros(2, 2))  # each reward reaches the tokens once


def test_lambda_has_no_default_here():
    # algo.rpc_weight is its one home: these functions must be given it
    for function in (routed_advantages, background_rewards_advantage):
        assert inspect.signature(function).parameters["rpc_weight"].default is inspect.Parameter.empty


def test_broadcast_gives_every_response_token_the_standardized_weighted_sum():
    rewards = {"format": torch.tensor([[1.0, 1.0, 0.0]]), "bbox3d": torch.tensor([[0.2, 0.8, float("nan")]])}
    valid = torch.tensor([[True, True, False]])
    response_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    out = broadcast_advantages(rewards, valid, {"format": 1.0, "bbox3d": 0.5}, response_mask)
    expected = standardized([1 + 0.5 * 0.2, 1 + 0.5 * 0.8])
    for row in range(2):
        on = response_mask[row].bool()
        assert torch.allclose(out[row, on], torch.full((int(on.sum()),), expected[row]))
        assert torch.equal(out[row, ~on], torch.zeros(int((~on).sum())))
    assert torch.equal(out[2], torch.zeros(4))


def test_advantage_stats_count_response_tokens_only():
    advantages = torch.tensor([[1.0, -1.0, 99.0], [0.0, 3.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    stats = advantage_stats(advantages, mask)
    values = [1.0, -1.0, 0.0, 3.0, 0.0]
    assert stats["mean"] == pytest.approx(statistics.mean(values))
    assert stats["std"] == pytest.approx(statistics.pstdev(values))
    assert stats["abs_max"] == 3.0 and stats["frac_nonzero"] == pytest.approx(3 / 5)
    assert advantage_stats(advantages, torch.zeros(2, 3))["frac_nonzero"] == 0.0


def credit_arms(valid, weights):
    """The two advantage functions a run uses, as `other_fields_credit` takes them: broadcast and routed (λ 0.15)."""
    return {
        "broadcast": lambda rewards, masks, response: broadcast_advantages(rewards, valid, weights, response),
        "routed": lambda rewards, masks, response: routed_advantages(rewards, valid, masks, response, 0.15),
    }


def test_other_fields_credit_is_the_residual_of_broadcast_and_zero_when_routed():
    # bbox3d [1, 0, 1, 0] and kpts3d [1, 1, 0, 0] are uncorrelated with equal variance: the broadcast sum correlates
    # with each at 1/sqrt(2), so eps = z(sum) - z(field) has population variance 2 * 0.75 * (1 - 1/sqrt(2)) and
    # a share 2 - sqrt(2) of the advantage's 0.75 on the field (4 z-scores with sample std: population var 3/4)
    rewards = {name: torch.zeros(1, 4) for name in ("format", "answer", "rpc", *ROUTED_FIELDS)}
    rewards["bbox3d"], rewards["kpts3d"] = torch.tensor([[1.0, 0, 1, 0]]), torch.tensor([[1.0, 1, 0, 0]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    response_mask = torch.ones(4, 3)
    masks = {name: torch.zeros(4, 3, dtype=torch.bool) for name in ROUTED_FIELDS}
    masks["bbox3d"][:, 0] = masks["kpts3d"][:, 2] = True  # one token each per row; bbox2d and kpts2d have none
    arms = credit_arms(valid, {"bbox3d": 1.0, "kpts3d": 1.0})
    for arm, advantage_of in arms.items():
        advantages = advantage_of(rewards, masks, response_mask)
        credit = other_fields_credit(advantage_of, rewards, valid, advantages, masks)
        assert set(credit) == {"bbox3d", "kpts3d"}  # a field without tokens is left out
        for field in ("bbox3d", "kpts3d"):
            if arm == "broadcast":
                assert credit[field]["var"] == pytest.approx(1.5 * (1 - 1 / math.sqrt(2)), rel=1e-5)
                assert credit[field]["share"] == pytest.approx(2 - math.sqrt(2), rel=1e-5)
            else:
                assert credit[field] == {"var": 0.0, "share": 0.0}


def test_other_fields_credit_weighs_rows_by_their_field_tokens_as_a_full_pass_does():
    # the probe tokens stand for every token of their span: compare with eps taken on the real [N, T] tokens
    generator = torch.Generator().manual_seed(0)
    names = ("format", "answer", "rpc", *ROUTED_FIELDS)
    rewards = {name: torch.rand(3, 5, generator=generator) for name in names}
    valid = torch.rand(3, 5, generator=generator) > 0.2
    response_mask = (torch.arange(12)[None] < torch.randint(4, 13, (15, 1), generator=generator)).float()
    span = torch.randint(0, 6, (15, 12), generator=generator)  # 4: answer, 5: description
    masks = {name: (span == k) & response_mask.bool() for k, name in enumerate(ROUTED_FIELDS)}
    for advantage_of in credit_arms(valid, dict.fromkeys(names, 0.5)).values():
        advantages = advantage_of(rewards, masks, response_mask)
        credit = other_fields_credit(advantage_of, rewards, valid, advantages, masks)
        for field, measured in credit.items():
            own = advantage_of(only_varying(rewards, valid, field), masks, response_mask)
            eps = (advantages - own)[masks[field]]
            assert measured["var"] == pytest.approx(eps.var(correction=0).item(), rel=1e-5, abs=1e-9)
    assert only_varying(rewards, valid, "bbox3d")["bbox3d"] is rewards["bbox3d"]
    assert torch.equal(group_standardize(only_varying(rewards, valid, "bbox3d")["rpc"], valid), torch.zeros(3, 5))
