"""DPO on 2 learner ranks over real torch.distributed (gloo, 2 processes on the CPU, DDP as Ray Train wraps it): a
rank whose shard has no pair (its rewards went missing) takes part in the step without aborting gloo, and the step's
loss statistics are the pair-weighted mean over ranks. Plus the weighted reduction itself and how missing rewards
stay out of the pairs."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from data3d import generate_sample
from policies.tiny import build_tiny_policy
from rewards import REWARDS
from rl.algorithms import algorithm
from rl.algorithms.batch import LearnBatch
from rl.algorithms.dpo import preference_batch
from rl.algorithms.update import ResponseScorer, learn_step, make_learner
from rl.config import run_quant, scalar_reward_weights
from rl.config_loading import load_config
from rl.runtime.learner import _mean_over_ranks, rank_terms, weighted_means
from rollout.batching import policy_inputs
from rollout.engine import SamplingConfig
from rollout.hf_engine import HFEngine

G, WORLD, PROMPTS = 2, 2, 4

# one row per response, prompt-major; rank 0 holds prompts 0-1 (rows 0-3), rank 1 prompts 2-3 (rows 4-7)
STEPS = [
    [1.0, 0.0, 0.0, 1.0, 1.0, None, None, None],  # rank 1: no group with two rewards, so no pair
    [1.0, 0.0, 0.0, 1.0, 0.2, 0.9, None, 0.5],  # rank 1: one pair (prompt 3 has one reward only)
]


def config():
    return load_config("dpo.yaml", [f"rollout.group_size={G}", "learner.micro_batch_size=8", "learner.lr=1e-3"])


def results(rewards: list[float | None]) -> list[dict | None]:
    """Reward service results giving every reward the same value (None: the sample's reward is missing)."""
    return [None if r is None else {"rewards": dict.fromkeys(REWARDS, r)} for r in rewards]


def dpo_batches(cfg) -> list[LearnBatch]:
    """Each of STEPS' rewards on one rollout of the tiny policy (4 prompts x G), as the controller builds DPO
    batches."""
    samples = [generate_sample(0, i, num_points=256, image_size=32, num_kpts=1) for i in range(PROMPTS)]
    policy = build_tiny_policy(seed=0).eval()
    inputs = policy_inputs(policy, samples, run_quant(cfg), cfg.data.use_images)
    sampling = SamplingConfig(n=G, temperature=cfg.rollout.temperature, max_new_tokens=10, seed=0)
    rollout = HFEngine(policy).generate(inputs, [s.uid for s in samples], sampling)
    weights = scalar_reward_weights(cfg)
    return [preference_batch(step, rollout, samples, results(r), weights)[0] for step, r in enumerate(STEPS)]


def dpo_rank(rank: int, store: str, out: str, batches: list[LearnBatch]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        cfg = config()
        policy, reference = build_tiny_policy(seed=0), build_tiny_policy(seed=0).eval()
        # as ray.train.torch.prepare_model wraps it in learner_loop
        scorer = torch.nn.parallel.DistributedDataParallel(ResponseScorer(policy), find_unused_parameters=True)
        learner, dpo = make_learner(policy, cfg, reference, WORLD, scorer), algorithm("dpo")
        local, reduced, pairs = [], [], []
        for batch in batches:
            shard = batch.shard(rank, WORLD)
            stats = learn_step(learner, dpo, shard, cfg)
            rows = dpo.learning_rows(shard)
            local.append(stats)
            reduced.append(_mean_over_ranks(stats, rows, WORLD, policy.device))
            pairs.append(rows)
        torch.save({"local": local, "reduced": reduced, "pairs": pairs}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_dpo_on_two_ranks_survives_a_rank_without_pairs_and_weights_losses_by_pairs(tmp_path):
    batches = dpo_batches(config())
    mp.spawn(dpo_rank, args=(str(tmp_path / "store"), str(tmp_path), batches), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert [r["pairs"] for r in ranks] == [[2, 2], [0, 1]]
    assert ranks[0]["reduced"] == ranks[1]["reduced"]  # every rank logs the same numbers
    first, second = ranks[0]["reduced"]
    assert not any(k.startswith("loss/") for k in ranks[1]["local"][0])  # the rank without pairs measured no loss

    # step 0: only rank 0 has pairs, so the step's losses are its own (not halved by rank 1's absent ones)
    own = {k: v for k, v in ranks[0]["local"][0].items() if k.startswith("loss/")}
    assert own and {k: first[k] for k in own} == pytest.approx(own)
    assert first["learner/skipped"] == 0.0 and first["learner/grad_norm"] > 0

    # the gradient too: DDP averages the ranks' gradients, so rank 0's loss weighs twice (its share of the pairs),
    # and the step follows rank 0's pairs alone, as one process would on them
    cfg = config()
    policy, reference = build_tiny_policy(seed=0), build_tiny_policy(seed=0).eval()
    alone = learn_step(make_learner(policy, cfg, reference), algorithm("dpo"), batches[0].shard(0, WORLD), cfg)
    assert first["learner/grad_norm"] == pytest.approx(alone["learner/grad_norm"], rel=1e-4)

    # step 1: 2 pairs against 1
    a, b = ranks[0]["local"][1], ranks[1]["local"][1]
    for key in (k for k in a if k.startswith("loss/")):
        assert second[key] == pytest.approx((2 * a[key] + 1 * b[key]) / 3, rel=1e-9), key
    assert a["loss/total"] != pytest.approx(b["loss/total"])  # the weighting is visible in the check above
    # the other statistics stay plain means over the ranks
    assert second["learner/grad_norm"] == pytest.approx((a["learner/grad_norm"] + b["learner/grad_norm"]) / 2)


def test_the_weighted_reduction_of_rank_statistics():
    per_rank = [
        ({"loss/total": 0.6, "loss/accuracy": 1.0, "learner/lr": 0.1}, 3),
        ({"learner/lr": 0.1}, 0),  # no pairs: no loss statistics at all
        ({"loss/total": 0.2, "loss/accuracy": 0.0, "learner/lr": 0.1, "time/learn": 4.0}, 1),
        ({"loss/total": 5.0, "learner/lr": 0.1}, 0),  # a loss over no rows teaches nothing and weighs nothing
    ]
    keys = sorted({key for stats, _ in per_rank for key in stats} | {"loss/unmeasured"})
    summed = sum(rank_terms(stats, keys, rows) for stats, rows in per_rank)
    assert weighted_means(keys, summed) == pytest.approx(
        {
            "loss/total": (3 * 0.6 + 1 * 0.2) / 4,
            "loss/accuracy": 3 / 4,
            "learner/lr": 0.1,
            "time/learn": 4.0,  # the mean over the ranks that report it
        }
    )  # loss/unmeasured: no rank gave it weight, so it is left out rather than logged as 0


def test_a_missing_reward_never_enters_a_dpo_pair():
    cfg = config()
    batch = dpo_batches(cfg)[1]
    valid = batch.valid.tolist()
    assert batch.pairs == [(0, 1), (3, 2), (5, 4)]  # prompts 0, 1 and 2; prompt 3 has one reward left
    assert all(valid[a] and valid[b] for a, b in batch.pairs)
    assert [algorithm("dpo").learning_rows(batch.shard(r, WORLD)) for r in range(WORLD)] == [2, 1]
