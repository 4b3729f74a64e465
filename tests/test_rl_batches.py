"""From scored rollouts to a learner batch: missing rewards, routed vs broadcast advantages, sharding."""

import pytest
import torch

from data3d import generate_sample, target_text
from policies.tiny import build_tiny_tokenizer
from rewards import score_batch
from rl.algorithms import algorithm
from rl.algorithms.batch import reward_table, score_rollouts
from rl.config import run_quant
from rl.config_loading import load_config
from rl.runtime.reward_client import make_reward_fn
from rollout.engine import RolloutBatch
from serve.server import free_port


def scored_batch(step, rollout, samples, results, tokenizer, cfg):
    """The token advantages of the run's algorithm (GRCA, or GRPO with algo.name=grpo) for a scored rollout."""
    return algorithm(cfg.algo.name).scored_batch(step, rollout, samples, results, tokenizer, cfg)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def rollout_of(tokenizer, texts: list[str], prompts: int) -> RolloutBatch:
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return RolloutBatch(
        version=3,
        uids=[f"u{p}" for p in range(prompts)],
        response_ids=ids,
        response_mask=mask,
        logprobs=torch.zeros(ids.shape),
        texts=texts,
        tokens_generated=int(mask.sum()),
        seconds=0.1,
        pad_token_id=tokenizer.pad_token_id,
    )


@pytest.fixture(scope="module")
def group():
    """One prompt, four responses: the exact target, a shifted 3D box, garbage, and the target again."""
    sample = generate_sample(0, 0, num_points=256, image_size=32, num_kpts=2)
    exact = target_text(sample)
    shifted = exact.replace('"bbox3d":[', '"bbox3d":[9', 1)
    return sample, [exact, shifted, "no json here", exact]


def test_a_failed_reward_call_marks_samples_missing(group):
    sample, texts = group
    dead_service = make_reward_fn("http", f"http://127.0.0.1:{free_port()}", timeout_s=2.0)
    assert (
        score_rollouts(rollout_of(build_tiny_tokenizer(), texts, 1), [sample], dead_service, run_quant(load_config()))
        == [None] * 4
    )


def test_missing_samples_get_zero_advantage_and_leave_the_statistics(tokenizer, group):
    sample, texts = group
    rollout = rollout_of(tokenizer, texts, 1)
    results = score_rollouts(rollout, [sample], make_reward_fn("local"), run_quant(load_config()))
    results[3] = None  # the reward service lost this one
    batch, metrics = scored_batch(0, rollout, [sample], results, tokenizer, load_config())
    assert metrics["reward/missing"] == 1.0
    assert (batch.advantages[3] == 0).all()
    table, valid = reward_table(results, 1, 4)
    assert valid.tolist() == [[True, True, True, False]]
    # with the duplicate gone, the exact target is the group's best: its bbox3d tokens get a positive advantage
    assert batch.advantages[0][batch.response_mask[0].bool()].min() > 0
    assert batch.version == 3 and batch.group_size == 4


def test_routed_advantage_differs_only_on_the_shifted_field(tokenizer, group):
    sample, texts = group
    rollout = rollout_of(tokenizer, texts[:2], 1)
    pair = [sample]
    results = score_batch(
        [{"text": t, "target": sample.targets.to_reward_target(), "camera": sample.camera.to_dict()} for t in texts[:2]]
    )
    cfg = load_config()
    routed, routed_metrics = scored_batch(0, rollout, pair, results, tokenizer, cfg)
    broadcast, broadcast_metrics = scored_batch(
        0, rollout, pair, results, tokenizer, load_config(overrides=["algo.name=grpo"])
    )
    shifted = routed.advantages[1][rollout.response_mask[1].bool()]
    assert shifted.min() < 0 and (shifted == 0).any()  # negative on bbox3d (and rpc's background share), 0 elsewhere
    flat = broadcast.advantages[1][rollout.response_mask[1].bool()]
    assert torch.allclose(flat, flat[0].expand_as(flat))  # broadcast: one value on every token
    # GRCA §3.6: the kpts3d rewards tie, so broadcast's +-1/sqrt(2) on the kpts3d tokens is all other fields' doing
    assert broadcast_metrics["credit/other_fields_var/kpts3d"] == pytest.approx(0.5, rel=1e-5)
    assert broadcast_metrics["credit/other_fields_share/kpts3d"] == pytest.approx(1.0, rel=1e-5)
    measured = [key for key in routed_metrics if key.startswith("credit/other_fields_var/")]
    assert len(measured) == 4 and all(routed_metrics[key] == 0.0 for key in measured)  # routed: none by construction


def test_routed_grpo_weighs_fields_by_algo_routed_field_weights_only(tokenizer, group):
    sample, texts = group
    rollout = rollout_of(tokenizer, texts[:2], 1)
    results = score_batch(
        [{"text": t, "target": sample.targets.to_reward_target(), "camera": sample.camera.to_dict()} for t in texts[:2]]
    )

    def advantages(*overrides):
        cfg = load_config(overrides=list(overrides))
        batch, _ = scored_batch(0, rollout, [sample], results, tokenizer, cfg)
        return batch.advantages

    plain = advantages()
    assert torch.equal(advantages("reward.field_weights.bbox3d=0"), plain)  # broadcast's weights do not reach routing
    doubled = advantages("algo.routed_field_weights.bbox3d=2")
    changed = doubled != plain
    assert changed.any() and torch.equal(doubled[changed], 2 * plain[changed])  # the bbox3d tokens, and only those


def test_shards_keep_groups_whole(tokenizer, group):
    sample, texts = group
    samples = [sample, generate_sample(0, 1, num_points=256, image_size=32, num_kpts=2)]
    rollout = rollout_of(tokenizer, texts * 2, 2)
    results = score_rollouts(rollout, samples, make_reward_fn("local"), run_quant(load_config()))
    cfg = load_config()
    batch, _ = scored_batch(0, rollout, samples, results, tokenizer, cfg)
    second = batch.shard(1, 2)
    assert second.samples == [samples[1]] and second.response_texts == texts
    assert torch.equal(second.advantages, batch.advantages[4:])
