"""The precision contract (policies/roles.py) on the CPU, where bfloat16 runs: a GRCA step with policy.dtype=bfloat16
under FSDP2 on 2 gloo ranks starts with the ratio at 1 and no KL to the reference, and AdamW moves the float32 master
weights that bfloat16 storage would freeze; the config refuses what would train wrong in silence."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from data3d import generate_sample
from policies import PointVLM
from policies.roles import stored_llm_dtype
from policies.tiny import build_tiny_policy
from rl.algorithms import algorithm
from rl.algorithms.batch import rollout_batch
from rl.algorithms.update import learn_step, make_learner
from rl.config import ConfigError, recomputes_old_logprobs, run_quant
from rl.config_loading import load_config
from rl.runtime.learner import learner_overrides, load_reference
from rl.runtime.sharding import shard_policy
from rollout.batching import policy_inputs
from rollout.engine import SamplingConfig
from rollout.hf_engine import HFEngine

G, WORLD, STEPS = 2, 2, 5
BF16 = ["policy.dtype=bfloat16", "learner.strategy=fsdp2"]


def config(*overrides):
    # one micro-batch of 2 rows per rank; a KL term, so that the reference is loaded and compared at step 0
    return load_config(
        "grca.yaml",
        [*BF16, f"rollout.group_size={G}", "learner.micro_batch_size=4", "algo.kl_beta=0.01", *overrides],
    )


def bf16_batch(policy_dir, cfg):
    """Two prompts x G responses sampled by a rollout worker's policy (its LLM stored in bfloat16)."""
    samples = [generate_sample(0, i, num_points=256, image_size=32, num_kpts=1) for i in range(2)]
    policy = PointVLM.from_pretrained(policy_dir, llm_dtype=cfg.policy.dtype).eval()
    inputs = policy_inputs(policy, samples, run_quant(cfg), cfg.data.use_images)
    sampling = SamplingConfig(n=G, temperature=cfg.rollout.temperature, max_new_tokens=10, seed=0)
    rollout = HFEngine(policy).generate(inputs, [s.uid for s in samples], sampling)
    advantages = torch.tensor([1.0, -1.0, -0.5, 0.5])[:, None] * rollout.response_mask
    return rollout_batch(0, rollout, samples, torch.ones(2 * G, dtype=bool), advantages=advantages)


def layer_weights(policy) -> dict[str, torch.Tensor]:
    """The decoder layers' float32 masters, whole (a collective under FSDP2)."""
    from torch.distributed.tensor import DTensor

    return {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
        for name, p in policy.named_parameters()
        if ".layers." in name
    }


def bf16_rank(rank: int, store: str, policy_dir: str, out: str, batch) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for lr in (1e-12, 1e-5):  # too small to move anything: the first step measures only the precision contract
            cfg = config(f"learner.lr={lr}")
            policy = PointVLM.from_pretrained(policy_dir, **learner_overrides(cfg))
            shard_policy(policy, torch.device("cpu"), WORLD, cfg.policy.dtype)
            reference = load_reference(cfg, policy_dir, torch.device("cpu"), WORLD)
            learner = make_learner(policy, cfg, reference, WORLD)
            before = layer_weights(policy)
            shard = batch.shard(rank, WORLD)
            stats = [learn_step(learner, algorithm(cfg.algo.name), shard, cfg) for _ in range(STEPS)]
            after = layer_weights(policy)
            results[lr] = {
                "first": stats[0],
                "dtypes": {str(p.dtype) for p in learner.accumulator.params},
                "moved": sum(int((after[k] != before[k]).sum()) for k in before),
                "elements": sum(t.numel() for t in before.values()),
            }
        if rank == 0:
            torch.save(results, f"{out}/rank0.pt")
    finally:
        dist.destroy_process_group()


def test_a_bf16_grca_step_under_fsdp2_starts_on_policy_and_adamw_moves_its_float32_masters(tmp_path):
    policy_dir = tmp_path / "policy"
    build_tiny_policy(seed=0, out_dir=policy_dir)
    batch = bf16_batch(policy_dir, config())
    args = (str(tmp_path / "store"), str(policy_dir), str(tmp_path), batch)
    mp.spawn(bf16_rank, args=args, nprocs=WORLD, join=True)
    results = torch.load(tmp_path / "rank0.pt", weights_only=False)

    first = results[1e-12]["first"]
    assert first["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-3)
    assert abs(first["loss/approx_kl"]) < 1e-4
    assert abs(first["loss/kl"]) < 1e-6  # the reference computes as the learner does
    # the rollout's KV-cached bfloat16 decode is not the learner's full pass: the learner's own log-probs are the
    # denominator, and how far apart the two are is logged
    assert first["mismatch/log_ratio_abs_max"] > 0

    trained = results[1e-5]
    assert trained["dtypes"] == {"torch.float32"}
    assert trained["moved"] >= 0.9 * trained["elements"], trained


def test_bf16_weights_under_plain_adamw_barely_move():
    """Why the learner keeps float32 masters: the same 5 steps at lr 1e-5 on weights stored in bfloat16."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter((torch.randn(256, 256, generator=generator) * 0.02).to(torch.bfloat16))
    optimizer = torch.optim.AdamW([weight], lr=1e-5)
    start = weight.detach().clone()
    for _ in range(STEPS):
        weight.grad = torch.randn(256, 256, generator=generator).to(torch.bfloat16)
        optimizer.step()
    assert (weight.detach() != start).float().mean() < 0.3


def test_the_learner_stores_float32_masters_only_where_fsdp2_computes_in_the_policy_dtype():
    assert stored_llm_dtype("bfloat16", sharded=True) == "float32"
    assert stored_llm_dtype("bfloat16", sharded=False) == "bfloat16"
    assert learner_overrides(config())["llm_dtype"] == "float32"
    lora = load_config("grca.yaml", ["policy.dtype=bfloat16", "policy.llm_mode=lora"])
    assert learner_overrides(lora)["llm_dtype"] == "bfloat16"  # a frozen base; peft keeps the adapters in float32


@pytest.mark.parametrize(
    "overrides, refused",
    [
        (["policy.dtype=bfloat16"], "learner.strategy: is ddp with policy.dtype=bfloat16"),
        (["policy.dtype=float16", "learner.strategy=fsdp2"], "policy.dtype: is float16"),
        ([*BF16, "learner.recompute_old_logprobs=false"], "learner.recompute_old_logprobs: is false"),
        (
            ["rollout.mode=one_step_off", "rollout.max_staleness=1", "learner.recompute_old_logprobs=false"],
            "rollout.mode=one_step_off (decoupled PPO",
        ),
        (
            ["rollout.backend=vllm", "rollout.vllm.dtype=bfloat16", "learner.recompute_old_logprobs=false"],
            "rollout.vllm.dtype=bfloat16 differs from policy.dtype=float32",
        ),
    ],
)
def test_the_config_refuses_what_would_train_wrong_in_silence(overrides, refused):
    with pytest.raises(ConfigError, match=refused.replace("(", r"\(")):
        load_config("grca.yaml", overrides)


@pytest.mark.parametrize(
    "overrides, recomputes",
    [
        ([], False),  # float32 HF rollouts: their log-probs are the learner's to ~1e-6
        (BF16, True),
        (["rollout.mode=one_step_off", "rollout.max_staleness=1"], True),
        (["rollout.backend=vllm", "rollout.vllm.dtype=bfloat16"], True),
        (["learner.recompute_old_logprobs=true"], True),
        (["policy.dtype=bfloat16", "policy.llm_mode=lora"], True),
    ],
)
def test_the_learner_recomputes_the_old_logprobs_wherever_the_rollouts_arithmetic_may_differ(overrides, recomputes):
    assert recomputes_old_logprobs(load_config("grca.yaml", overrides)) is recomputes
