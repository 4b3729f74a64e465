"""FSDP2 and the learner's memory options on real torch.distributed (gloo, 2 processes on the CPU): one sharded
AdamW step equals the single-process step, sharded checkpoints read back exactly, the gathered export equals the
shards; chunked log-probs and activation checkpointing give the values and gradients of the plain pass. Then the
FSDP2 learner end to end: `rl.runtime.driver.main` runs the SFT warm-up and a GRPO step with 2 Ray Train ranks on a real
local Ray cluster, and a second run resumes from the sharded checkpoint."""

from __future__ import annotations

import json

import pytest
import ray
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from data3d import generate_sample
from policies.tiny import build_tiny_policy
from rl.algorithms import algorithm
from rl.algorithms.batch import LearnBatch, rollout_batch
from rl.algorithms.update import learn_step, make_learner, make_optimizer
from rl.config import run_quant
from rl.config_loading import load_config
from rl.runtime.driver import main, run_stage
from rl.runtime.sharding import full_state, load_sharded, published_state, save_sharded, shard_policy
from rollout.batching import policy_inputs
from rollout.engine import SamplingConfig
from rollout.hf_engine import HFEngine

G, WORLD = 2, 2


def config():
    # one micro-batch per rank (2 rows) and one of all 4 rows in the single process: the same mean gradient
    return load_config(
        "grpo.yaml",
        [
            f"rollout.group_size={G}",
            "learner.micro_batch_size=4",
            "learner.lr=1e-5",
            "learner.weight_decay=0.1",
            "learner.strategy=fsdp2",
        ],
    )


def grpo_batch(cfg) -> LearnBatch:
    """Two prompts x G sampled responses of the tiny policy with fixed advantages (every row teaches something)."""
    samples = [generate_sample(0, i, num_points=256, image_size=32, num_kpts=1) for i in range(2)]
    policy = build_tiny_policy(seed=0).eval()
    inputs = policy_inputs(policy, samples, run_quant(cfg), cfg.data.use_images)
    sampling = SamplingConfig(n=G, temperature=cfg.rollout.temperature, max_new_tokens=10, seed=0)
    rollout = HFEngine(policy).generate(inputs, [s.uid for s in samples], sampling)
    advantages = torch.tensor([1.0, -1.0, -0.5, 0.5])[:, None] * rollout.response_mask
    return rollout_batch(0, rollout, samples, torch.ones(4, dtype=bool), advantages=advantages)


def one_step(policy, cfg, batch, world: int):
    """One learner step; returns the optimizer, the step's statistics and the (clipped) gradients it stepped on."""
    from torch.distributed.tensor import DTensor

    trainable = {name: p for name, p in policy.named_parameters() if p.requires_grad}
    learner = make_learner(policy, cfg, world=world)
    optimizer, grads = learner.accumulator.optimizer, {}

    def keep(*_):  # every rank runs it at its optimizer step, so the gathers line up
        grads.update(
            {
                name: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).clone()
                for name, p in trainable.items()
                if p.grad is not None
            }
        )

    optimizer.register_step_pre_hook(keep)
    stats = learn_step(learner, algorithm(cfg.algo.name), batch, cfg)
    return optimizer, stats, grads


def sharded_rank(rank: int, store: str, out: str, batch: LearnBatch) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        cfg = config()
        policy = build_tiny_policy(seed=0)
        shard_policy(policy, torch.device("cpu"), WORLD)
        optimizer, stats, grads = one_step(policy, cfg, batch.shard(rank, WORLD), WORLD)
        stepped = dict(published_state(policy, rank))
        # a sharded checkpoint read back into a policy that starts elsewhere (another seed) and a fresh optimizer
        save_sharded(policy, optimizer, f"{out}/shards")
        restored = build_tiny_policy(seed=1)
        shard_policy(restored, torch.device("cpu"), WORLD)
        restored_optimizer, _ = make_optimizer([p for p in restored.parameters() if p.requires_grad], cfg)
        load_sharded(restored, restored_optimizer, f"{out}/shards")
        moments = [
            (a["exp_avg"].to_local() - b["exp_avg"].to_local()).abs().max().item()
            for a, b in zip(optimizer.state.values(), restored_optimizer.state.values(), strict=True)
        ]
        reread = dict(published_state(restored, rank))
        whole = full_state(policy)  # rank 0 gets it all
        if rank == 0:
            export = build_tiny_policy(seed=2)
            export.load_state_dict(whole)  # strict: every key of the unsharded policy is there
            torch.save(
                {
                    "stepped": stepped,
                    "grads": grads,
                    "reread": reread,
                    "exported": export.trainable_state_dict(),
                    "moments": max(moments),
                    "stats": stats,
                },
                f"{out}/rank0.pt",
            )
    finally:
        dist.destroy_process_group()


def test_an_fsdp2_step_on_two_gloo_ranks_equals_the_single_process_step(tmp_path):
    cfg = config()
    batch = grpo_batch(cfg)
    mp.spawn(sharded_rank, args=(str(tmp_path / "store"), str(tmp_path), batch), nprocs=WORLD, join=True)
    got = torch.load(tmp_path / "rank0.pt", weights_only=False)

    single = build_tiny_policy(seed=0)
    before = {k: v.clone() for k, v in single.trainable_state_dict().items()}
    _, stats, grads = one_step(single, cfg, batch, world=1)
    after = single.trainable_state_dict()
    assert set(got["stepped"]) == set(after) and set(got["grads"]) == set(grads)
    # the gradients, reduced over the shards, are those of one process (to float noise: a rank's prompts are padded
    # to its own longest, the single process's to the longest of all)
    assert relative_gap(got["grads"], grads) < 1e-5
    # the step (AdamW's first step moves each weight by about lr; where a gradient is near AdamW's eps, 1e-8, float
    # noise in it moves the update by a fraction of lr, so the bound is a fraction of lr)
    delta = max((got["stepped"][k] - after[k]).abs().max().item() for k in after)
    moved = max((after[k] - before[k]).abs().max().item() for k in after)
    assert delta < 1e-6 and moved > 5e-6, (delta, moved)
    norm = stats["learner/grad_norm"]  # the clipping norm, taken over every rank's shards
    assert abs(got["stats"]["learner/grad_norm"] - norm) < 1e-5 * norm
    # the sharded checkpoint and the gathered export give back exactly the stepped weights
    assert all(torch.equal(got["reread"][k], got["stepped"][k]) for k in after) and got["moments"] == 0.0
    assert all(torch.equal(got["exported"][k], got["stepped"][k]) for k in after)


def relative_gap(got: dict, want: dict) -> float:
    """The largest difference over all tensors, relative to the largest magnitude of `want`."""
    return max((got[k] - want[k]).abs().max().item() for k in want) / max(t.abs().max().item() for t in want.values())


def scoring_inputs(policy):
    samples = [generate_sample(0, i, num_points=256, image_size=32, num_kpts=1) for i in range(2)]
    ids = torch.randint(0, len(policy.tokenizer), (2, 13), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return policy_inputs(policy, samples, None, True), ids, mask


def values_and_grads(policy, *args, **kwargs):
    logprobs = policy.logprobs(*args, **kwargs)
    grads = torch.autograd.grad(logprobs.sum(), [p for p in policy.parameters() if p.requires_grad])
    return logprobs.detach(), grads


def test_chunked_logprobs_equal_the_full_pass():
    policy = build_tiny_policy(seed=0).eval()
    inputs, ids, mask = scoring_inputs(policy)
    full, full_grads = values_and_grads(policy, inputs, ids, mask, 0.7)
    for chunk in (1, 4, 13, 64):
        chunked, grads = values_and_grads(policy, inputs, ids, mask, 0.7, chunk=chunk)
        assert (chunked - full).abs().max() < 1e-6, chunk
        assert relative_gap(dict(enumerate(grads)), dict(enumerate(full_grads))) < 1e-5, chunk


def test_activation_checkpointing_keeps_values_and_gradients():
    assert_checkpointing_keeps_values_and_gradients()


def assert_checkpointing_keeps_values_and_gradients() -> None:
    """Also run by the vLLM lane, whose venv pins a transformers from before `activation_checkpointing_enable`."""
    from rl.runtime.sharding import enable_activation_checkpointing

    policy = build_tiny_policy(seed=0).train()
    inputs, ids, mask = scoring_inputs(policy)
    plain, plain_grads = values_and_grads(policy, inputs, ids, mask)
    enable_activation_checkpointing(policy)
    on = getattr(policy.llm, "is_activation_checkpointing", None)
    assert on if on is not None else policy.llm.is_gradient_checkpointing
    checkpointed, grads = values_and_grads(policy, inputs, ids, mask)
    assert torch.equal(checkpointed, plain)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads, plain_grads, strict=True))


# the tiny policy on two one-keypoint prompts with short answers: a stage takes seconds on 2 CPUs
SMALL = [
    "learner.recompute_old_logprobs=true",  # the rows check the sharded learner against the rollouts
    "data.num_points=256",
    "data.image_size=32",
    "data.num_kpts=1",
    "data.train_size=2",
    "data.eval_size=2",
    "rollout.num_workers=2",
    "rollout.cpus_per_worker=0.25",
    "rollout.group_size=2",
    "rollout.prompts_per_step=2",
    "rollout.max_new_tokens=24",
    "eval.max_new_tokens=24",
    "eval.reliance=false",
    "reward.mode=local",
    "learner.cpus_per_worker=0.5",
    "learner.lr=1e-3",
    "checkpoint.every=1",
    "sft.steps=1",
    "sft.batch_size=2",
    "learner.num_workers=2",
    "learner.strategy=fsdp2",
    "learner.logprob_chunk=8",
    "learner.activation_checkpointing=true",
]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, include_dashboard=False, namespace="pointrl")
    yield
    ray.shutdown()


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_fsdp2_learner_runs_grpo_end_to_end_and_resumes_from_its_shards(cluster, tmp_path):
    from policies import PointVLM

    run = tmp_path / "grpo"
    reports = main("grpo.yaml", [*SMALL, f"run.dir={run}", "run.steps=1"])
    assert set(reports) == {"sft", "final"}
    init, warm = (PointVLM.from_pretrained(run / d).trainable_state_dict() for d in ("init_policy", "sft/policy"))
    assert any(not torch.equal(init[k], warm[k]) for k in init)  # the sharded SFT step moved the exported weights
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1] and "loss/total" in rows[0]
    # the rollout workers hold the gathered weights: their log-probs are the sharded learner's
    assert rows[0]["mismatch/log_ratio_abs_max"] < 1e-4
    shards = sorted(p.name for p in (run / "learner").glob("checkpoint_*/shards/*"))
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # both ranks wrote theirs

    resumed = load_config("grpo.yaml", [*SMALL, f"run.dir={run}", "run.steps=2"])
    final = run_stage(resumed, run / "sft" / "policy", run)
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["rollout/version"] == 1.0
    assert rows[1]["mismatch/log_ratio_abs_max"] < 1e-4  # shards read back = the weights published from them
    assert (final / "pointvlm.json").is_file()
