"""The objectives a 2026 user compares GRCA with (issue 27): Dr. GRPO's centred advantages and fixed-length
reduction, DAPO's token mean, clip-higher, overlong shaping and dynamic sampling, GSPO's span ratio, CISPO's clipped
weight and GDPO's decoupled normalization: values by hand, then each option two steps end to end in one process."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rl.algorithms import algorithm
from rl.algorithms.advantages import broadcast_advantages, decoupled_advantages, group_standardize
from rl.algorithms.batch import draw_position
from rl.algorithms.dapo import overlong_penalty
from rl.algorithms.grca import step
from rl.algorithms.losses import aggregate_loss, clipped_surrogate_loss, span_log_ratio
from rl.algorithms.update import make_learner, window_tokens
from rl.config_loading import ConfigError, load_config
from rl.runtime.local import InProcessSource
from tests.conftest import TINY_BATCH as BATCH
from tests.conftest import TINY_DATA as DATA

VALUES = torch.tensor([[1.0, 3.0, 100.0], [4.0, float("-inf"), float("nan")]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_the_three_loss_aggregations_by_hand():
    assert aggregate_loss(VALUES, MASK, "seq_mean_token_mean").item() == 3.0  # (2 + 4) / 2
    assert aggregate_loss(VALUES, MASK, "token_mean").item() == pytest.approx(8 / 3)  # every token alike
    assert aggregate_loss(VALUES, MASK, "token_mean", tokens=4).item() == 2.0  # the window's token count
    assert aggregate_loss(VALUES, MASK, "token_sum_norm", max_tokens=8).item() == 0.5  # (4/8 + 4/8) / 2
    with pytest.raises(ValueError, match="token_sum_norm needs max_tokens"):
        aggregate_loss(VALUES, MASK, "token_sum_norm")
    with pytest.raises(ValueError, match="got 'sum'"):
        aggregate_loss(VALUES, MASK, "sum")


def test_token_mean_over_accumulation_windows_is_the_windows_token_mean():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]])
    chunks = [[0], [1], [2], [3], [4]]
    assert window_tokens(mask, chunks, grad_accum=2) == [2.0, 2.0, 2.5, 2.5, 3.0]  # windows (3, 1), (2, 3), (3)
    # what the accumulator sums over a window (each loss over the window's length) is the mean over its tokens
    values = torch.arange(15.0).view(5, 3)
    per_chunk = [aggregate_loss(values[r], mask[r], "token_mean", t) / 2 for r, t in zip(chunks[:2], [2.0, 2.0])]
    assert sum(per_chunk).item() == pytest.approx((0 + 1 + 2 + 3) / 4)


def test_span_ratio_is_each_spans_mean_log_ratio():
    log_ratio = torch.tensor([[0.1, 0.3, 0.2, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    spans = torch.tensor([[0, 1, 0, 2]])
    assert span_log_ratio(log_ratio, mask, spans)[0].tolist() == pytest.approx([0.15, 0.3, 0.15, 0.0])
    assert span_log_ratio(log_ratio, mask, None)[0].tolist() == pytest.approx([0.2, 0.2, 0.2, 0.0])  # GSPO's s_i


def test_gspo_clips_a_span_as_one():
    logprobs = torch.tensor([[-1.0, -1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.3, -0.9, -1.1]])  # token ratios e^0.3 (alone: clipped), e^-0.1, e^0.1
    mask, advantages = torch.ones(1, 3), torch.ones(1, 3)
    assert clipped_surrogate_loss(logprobs, old, advantages, mask, 0.2)[1]["clip_fraction"] == pytest.approx(1 / 3)
    loss, stats = clipped_surrogate_loss(logprobs, old, advantages, mask, 0.2, sequence_ratio=True)
    s = math.exp(0.1)  # the geometric mean, inside [0.8, 1.2]: no token is clipped, the first one included
    assert loss.item() == pytest.approx(-s) and stats["clip_fraction"] == 0.0
    loss.backward()
    assert logprobs.grad[0].tolist() == pytest.approx([-s / 3] * 3)  # GSPO's gradient: s A mean_t grad log pi
    far = old - 0.5  # the mean log-ratio 0.6: the whole response is clipped, no token learns
    clipped, stats = clipped_surrogate_loss(logprobs, far, advantages, mask, 0.2, sequence_ratio=True)
    assert clipped.item() == pytest.approx(-1.2) and stats["clip_fraction"] == 1.0


def test_cispo_keeps_the_gradient_of_a_clipped_token_scaled_by_its_clipped_weight():
    logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.2, -1.0]])  # ratios e^0.2 = 1.22 (clipped to 1.2) and e^-1 = 0.37 (to 0.8)
    advantages, mask = torch.ones(1, 2), torch.ones(1, 2)
    loss, stats = clipped_surrogate_loss(logprobs, old, advantages, mask, 0.2, objective="cispo")
    assert loss.item() == pytest.approx(-(1.2 * -1.0 + 0.8 * -2.0) / 2)
    assert stats["clip_fraction"] == 1.0
    loss.backward()
    assert logprobs.grad[0].tolist() == pytest.approx([-0.6, -0.4])  # -w_t A_t / 2: both tokens learn
    ppo = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    clipped_surrogate_loss(ppo, old, advantages, mask, 0.2)[0].backward()
    assert ppo.grad[0, 0] == 0 and ppo.grad[0, 1] != 0  # PPO's clip drops the first token's gradient


def test_dr_grpo_centres_without_dividing_by_the_std():
    rewards, valid = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]), torch.ones(2, 3, dtype=torch.bool)
    assert group_standardize(rewards, valid, divide_by_std=False).tolist() == [[-1, 0, 1], [0, 0, 0]]
    mask = torch.ones(6, 2)
    advantages = broadcast_advantages({"r": rewards}, valid, {"r": 1.0}, mask, divide_by_std=False)
    assert advantages[:, 0].tolist() == [-1, 0, 1, 0, 0, 0]


def test_gdpo_standardizes_each_reward_then_the_weighted_sum_over_the_batch():
    rewards = {"a": torch.tensor([[1.0, 0.0], [1.0, 1.0]]), "b": torch.tensor([[0.0, 1.0], [0.0, 2.0]])}
    valid, mask = torch.ones(2, 2, dtype=torch.bool), torch.ones(4, 3)
    advantages = decoupled_advantages(rewards, valid, {"a": 2.0, "b": 1.0}, mask)
    # each reward's group: +-1/sqrt(2); sums [1/sqrt(2), -1/sqrt(2)] and [-1/sqrt(2), 1/sqrt(2)]; over the batch
    # (mean 0, sample std sqrt(2/3)) that is +-sqrt(3)/2 on every token
    half = math.sqrt(3) / 2
    assert advantages[:, 0].tolist() == pytest.approx([half, -half, -half, half], abs=1e-5)
    assert torch.equal(advantages[:, 0:1].expand(4, 3), advantages)
    # a reward whose spread is small still counts as much as a large one: scaling b by 100 changes nothing
    scaled = decoupled_advantages({**rewards, "b": rewards["b"] * 100}, valid, {"a": 2.0, "b": 1.0}, mask)
    assert torch.allclose(scaled, advantages, atol=1e-5)


def test_dapo_overlong_penalty_by_hand():
    lengths = torch.tensor([50, 80, 90, 100])
    assert overlong_penalty(lengths, max_tokens=100, buffer=20).tolist() == [0, 0, -0.5, -1]
    assert overlong_penalty(lengths, max_tokens=100, buffer=0).tolist() == [0, 0, 0, 0]


def test_dapo_is_its_recipe_unless_the_run_says_otherwise():
    cfg = load_config("grca.yaml", ["algo.name=dapo"])
    assert (cfg.algo.clip_eps_high, cfg.algo.loss_agg, cfg.rollout.dynamic_sampling) == (0.28, "token_mean", True)
    cfg = load_config("dapo.yaml", ["rollout.dynamic_sampling=false", "algo.clip_eps_high=0.3"])
    assert (cfg.algo.clip_eps_high, cfg.algo.loss_agg, cfg.rollout.dynamic_sampling) == (0.3, "token_mean", False)
    assert load_config("grca.yaml").algo.loss_agg == "seq_mean_token_mean"  # the recipe is DAPO's alone


@pytest.mark.parametrize(
    "overrides, problem",
    [
        (["algo.name=sft", "algo.loss=cispo"], "algo.loss: is set, but algo.name=sft has no clipped ratio"),
        (["algo.name=dpo", "rollout.dynamic_sampling=true"], "rollout.dynamic_sampling: is set, but algo.name=dpo"),
        (["algo.loss_agg=sum"], "algo.loss_agg: expected one of seq_mean_token_mean, token_mean, token_sum_norm"),
        (
            ["rollout.dynamic_sampling=true", "rollout.mode=one_step_off", "rollout.max_staleness=1"],
            "rollout.dynamic_sampling: is true with rollout.mode=one_step_off",
        ),
    ],
)
def test_options_that_would_do_nothing_are_refused_in_one_line(overrides, problem):
    with pytest.raises(ConfigError, match=problem.replace(".", r"\.")):
        load_config("grca.yaml", overrides)


def test_refills_read_past_the_runs_steps():
    cfg = load_config("grca.yaml", ["run.steps=10", "rollout.max_refills=3"])
    assert [draw_position(cfg, 2, d) for d in range(4)] == [2, 16, 17, 18]  # 10 + 2 * 3 + d - 1
    assert len({draw_position(cfg, s, d) for s in range(10) for d in range(4)}) == 40  # no two draws share one


OPTIONS = {
    "gdpo": ["algo.name=gdpo"],
    "dapo": ["algo.name=dapo"],
    "dr_grpo": ["algo.name=grpo", "algo.advantage_norm=none", "algo.loss_agg=token_sum_norm"],
    "gspo": ["algo.name=grpo", "algo.ratio=sequence", "algo.clip_eps=0.001"],
    "grca_span_ratio": ["algo.ratio=sequence"],
    "grca_cispo": ["algo.loss=cispo", "algo.clip_eps_high=5"],
    "grca_dynamic_sampling": ["rollout.dynamic_sampling=true", "rollout.max_refills=2"],
}


@pytest.mark.parametrize("name", OPTIONS)
def test_each_objective_runs_two_steps_and_moves_the_policy(taught_policy, name):
    cfg = load_config(
        "grca.yaml",
        [*DATA, *BATCH, "rollout.group_size=4", "rollout.max_new_tokens=100", "learner.lr=1e-4", *OPTIONS[name]],
    )
    policy = copy.deepcopy(taught_policy)
    source, learner = InProcessSource(cfg, policy), make_learner(policy, cfg)
    before = {k: v.clone() for k, v in policy.trainable_state_dict().items()}
    rows = [step(k, source, learner, cfg, algorithm(cfg.algo.name)) for k in range(2)]
    assert all(math.isfinite(r["loss/total"]) for r in rows)
    assert max(r["learner/grad_norm"] for r in rows) > 0
    assert any(not torch.equal(before[k], v) for k, v in policy.trainable_state_dict().items())
    if cfg.rollout.dynamic_sampling:
        assert all(r["sampling/groups"] <= cfg.rollout.prompts_per_step for r in rows)
        assert all(1 <= r["sampling/draws"] <= 1 + cfg.rollout.max_refills for r in rows)


def test_the_span_ratio_follows_the_routing(taught_policy):
    """GRCA's batch carries each token's span (0 the background, k the k-th routed field); broadcast has one."""
    options = [*DATA, *BATCH, "rollout.group_size=4", "rollout.max_new_tokens=100"]
    cfg = load_config("grca.yaml", options)
    batch, _ = algorithm("grca").batch(0, InProcessSource(cfg, taught_policy), cfg)
    spans = batch.ratio_spans[batch.response_mask.bool()]
    assert set(spans.tolist()) <= set(range(1 + len(cfg.algo.routed_fields))) and spans.max() > 0
    grpo = load_config("grpo.yaml", options)
    assert algorithm("grpo").batch(0, InProcessSource(grpo, taught_policy), grpo)[0].ratio_spans is None


@pytest.mark.parametrize("name", ["gdpo", "dapo"])
def test_each_new_algorithm_has_its_entry_script(name):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "rl" / f"train_{name}.py"
    listing = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    algo = listing.stdout.split("\nalgo:")[1].splitlines()  # --help lists the config it runs, section by section
    assert algo[1].split()[:3] == ["name", "str", f'"{name}"']
