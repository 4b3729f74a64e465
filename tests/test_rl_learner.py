"""The learner's optimization in process (no Ray): accumulation windows, skipped steps, loss statistics, the LR
schedule and the temperature of the recomputed log-probs, on real optimizers and the tiny policy."""

from __future__ import annotations

import math

import pytest
import torch

from data3d import generate_sample
from policies.tiny import build_tiny_policy
from rl.algorithms import algorithm
from rl.algorithms.batch import rollout_batch
from rl.algorithms.update import Accumulator, learn_step, make_learner
from rl.config import run_quant
from rl.config_loading import load_config
from rl.runtime.learner import load_reference
from rollout.batching import policy_inputs
from rollout.engine import SamplingConfig
from rollout.hf_engine import HFEngine


def counted(optimizer: torch.optim.Optimizer) -> list[int]:
    """A list that grows by one at every real `optimizer.step()`."""
    steps: list[int] = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    return steps


@pytest.mark.parametrize(
    "epochs, grad_accum, micro, expected", [(2, 2, 3, 4), (1, 4, 3, 1), (3, 1, 2, 6), (1, 4, 5, 2)]
)
def test_accumulation_windows_close_at_every_epoch_end(epochs, grad_accum, micro, expected):
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = counted(optimizer)
    accumulator = Accumulator(optimizer, model.parameters(), grad_accum, grad_clip=1e9)
    for _ in range(epochs):
        accumulator.epoch(micro)
        for _ in range(micro):
            accumulator.backward(model(torch.ones(1, 3)).sum())
    assert len(steps) == expected and all(p.grad is None for p in model.parameters())


def test_each_step_follows_the_mean_gradient_of_its_window():
    # grad_accum 4 over 7 micro-batches: a window of 4, then the epoch's last window of 3 (divided by 3, not 4)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    batches = [torch.randn(2, 3) for _ in range(7)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay put, so each gradient is known ahead
    seen: list[torch.Tensor] = []
    optimizer.register_step_pre_hook(lambda *_: seen.append(model.weight.grad.clone()))
    grads = [torch.autograd.grad(model(x).square().mean(), model.weight)[0] for x in batches]
    accumulator = Accumulator(optimizer, model.parameters(), grad_accum=4, grad_clip=1e9)
    accumulator.epoch(len(batches))
    for x in batches:
        accumulator.backward(model(x).square().mean())
    assert len(seen) == 2
    assert torch.allclose(seen[0], torch.stack(grads[:4]).mean(0), atol=1e-6)
    assert torch.allclose(seen[1], torch.stack(grads[4:]).mean(0), atol=1e-6)


def test_an_epoch_must_run_the_micro_batches_it_announced():
    model = torch.nn.Linear(3, 1)
    accumulator = Accumulator(torch.optim.SGD(model.parameters(), lr=0.1), model.parameters(), 2, grad_clip=1.0)
    accumulator.epoch(1)
    accumulator.backward(model(torch.ones(1, 3)).sum())
    with pytest.raises(RuntimeError, match="micro-batch 2 of an epoch of 1"):
        accumulator.backward(model(torch.ones(1, 3)).sum())


G = 2


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(0, i, num_points=256, image_size=32, num_kpts=1) for i in range(2)]


def config(*overrides):
    return load_config(
        "grpo.yaml",
        [
            f"rollout.group_size={G}",
            "learner.micro_batch_size=2",
            "learner.lr=1e-2",
            "learner.weight_decay=0.1",
            *overrides,
        ],
    )


class Rank:
    """One learner rank built as `learner_loop` builds it, without Ray or DDP."""

    def __init__(self, cfg, seed: int = 0):
        self.cfg, self.policy = cfg, build_tiny_policy(seed=seed).eval()
        self.learner = make_learner(self.policy, cfg)

    def rollout(self, samples, seed: int = 0):
        """G sampled responses per sample at the run's temperature, with the log-probs the rollout engine reports."""
        sampling = SamplingConfig(n=G, temperature=self.cfg.rollout.temperature, max_new_tokens=10, seed=seed)
        inputs = policy_inputs(self.policy, samples, run_quant(self.cfg), self.cfg.data.use_images)
        return HFEngine(self.policy).generate(inputs, [s.uid for s in samples], sampling)

    def batch(self, samples, rollout, advantages: list[float], valid: list[bool]):
        advantages = torch.tensor(advantages)[:, None] * rollout.response_mask
        return rollout_batch(0, rollout, samples, torch.tensor(valid), advantages=advantages)

    def step(self, batch):
        return learn_step(self.learner, algorithm(self.cfg.algo.name), batch, self.cfg)


def test_a_step_without_any_reward_leaves_weights_and_optimizer_untouched(samples):
    rank = Rank(config())
    rollout = rank.rollout(samples)
    first = rank.step(rank.batch(samples, rollout, [1.0, -1.0, -1.0, 1.0], [True] * 4))
    assert first["learner/skipped"] == 0.0 and first["learner/grad_norm"] > 0
    weights = {k: v.clone() for k, v in rank.policy.trainable_state_dict().items()}
    moments = {k: v["exp_avg"].clone() for k, v in rank.learner.accumulator.optimizer.state.items()}
    assert any(m.abs().max() > 0 for m in moments.values())  # AdamW would move on this momentum alone

    # the reward service was down: every sample missing, advantages 0
    stats = rank.step(rank.batch(samples, rollout, [0.0] * 4, [False] * 4))
    assert stats["learner/skipped"] == 1.0 and stats["learner/grad_norm"] == 0.0 and "loss/total" not in stats
    after = rank.policy.trainable_state_dict()
    assert all(torch.equal(after[k], weights[k]) for k in weights)
    assert all(torch.equal(rank.learner.accumulator.optimizer.state[p]["exp_avg"], m) for p, m in moments.items())


def test_the_learner_recomputes_the_rollout_logprobs_at_the_sampling_temperature(samples):
    rank = Rank(config("rollout.temperature=0.5", "learner.recompute_old_logprobs=true"))
    rollout = rank.rollout(samples)
    stats = rank.step(rank.batch(samples, rollout, [1.0, -1.0, -1.0, 1.0], [True] * 4))
    assert stats["mismatch/log_ratio_abs_max"] < 1e-4  # the PPO ratio starts at exactly the sampling policy


@pytest.mark.parametrize("recompute, ratio", [(False, math.exp(-0.1)), (True, 1.0)])
def test_the_ratio_is_to_the_rollouts_logprobs_unless_asked_to_recompute_them(samples, recompute, ratio):
    # rollout log-probs 0.1 above what the policy gives: taken as they are, every first ratio is e^-0.1
    rank = Rank(config("learner.grad_accum=2", f"learner.recompute_old_logprobs={str(recompute).lower()}"))
    rollout = rank.rollout(samples)
    rollout.logprobs = rollout.logprobs + 0.1 * rollout.response_mask
    stats = rank.step(rank.batch(samples, rollout, [1.0, -1.0, -1.0, 1.0], [True] * 4))
    assert stats["loss/ratio_mean"] == pytest.approx(ratio, abs=1e-4)
    assert ("mismatch/log_ratio_abs_max" in stats) == recompute


def test_loss_statistics_average_every_micro_batch(samples):
    # one accumulation window over both micro-batches: the weights do not move between them, so each ratio is 1 and
    # each micro-batch's loss is minus its mean advantage
    rank = Rank(config("learner.grad_accum=2"))
    rollout = rank.rollout(samples)
    stats = rank.step(rank.batch(samples, rollout, [1.0, 1.0, -1.0, 0.5], [True] * 4))
    assert stats["loss/total"] == pytest.approx((-1.0 + 0.25) / 2, abs=1e-4)
    assert stats["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-4)


def test_warmup_and_schedule_advance_once_per_rl_step(samples):
    # two micro-batches a step make two optimizer steps a step; the schedule still counts RL steps
    rank = Rank(config("learner.warmup_steps=2", "learner.schedule=linear", "run.steps=4"))
    used: list[float] = []
    rank.learner.accumulator.optimizer.register_step_pre_hook(
        lambda optimizer, *_: used.append(optimizer.param_groups[0]["lr"])
    )
    batch = rank.batch(samples, rank.rollout(samples), [1.0, -1.0, -1.0, 1.0], [True] * 4)
    logged = [rank.step(batch)["learner/lr"] for _ in range(4)]
    expected = [1e-2 * f for f in (0.5, 1.0, 1.0, 0.5)]  # warm-up 1/2, 2/2, then linear decay over steps 2..3
    assert logged == pytest.approx(expected) and used == pytest.approx([lr for lr in expected for _ in range(2)])


def test_the_reference_model_is_stored_as_the_learners_policy(tmp_path):
    build_tiny_policy(out_dir=tmp_path / "policy")  # saved in float32
    cpu = torch.device("cpu")
    assert load_reference(config(), tmp_path / "policy", cpu, 1) is None  # GRPO without a KL term needs none
    # a DDP learner in bfloat16 trains LoRA adapters over a bfloat16 base: the reference is that base
    lora = config("algo.name=dpo", "policy.dtype=bfloat16", "policy.llm_mode=lora")
    reference = load_reference(lora, tmp_path / "policy", cpu, 1)
    assert reference.llm.dtype == torch.bfloat16 and not reference.training
    assert not any(p.requires_grad for p in reference.parameters())
    assert load_reference(config("algo.kl_beta=0.01"), tmp_path / "policy", cpu, 1).llm.dtype == torch.float32
