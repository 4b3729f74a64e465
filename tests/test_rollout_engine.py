"""Rollout without Ray: samples -> policy inputs, the HF engine's versioned batches, sharding and gathering, and the
vLLM backend's install hint on a machine without vLLM."""

import importlib.util
from dataclasses import replace

import numpy as np
import pytest
import torch

from data3d import generate_sample, prompt_text
from policies import build_tiny_policy, tiny_config
from policies.inputs import FUSIONS
from rewards import Quant
from rollout import (
    HFEngine,
    RolloutBatch,
    SamplingConfig,
    VLLMEngine,
    concat_batches,
    make_engine,
    policy_inputs,
    split_evenly,
)

G = 4


@pytest.fixture(scope="module")
def policy(request):
    """The tiny policy; with the fusion a test names (`parametrize("policy", FUSIONS, indirect=True)`), else learned."""
    return build_tiny_policy(seed=0, config=tiny_config(fusion=getattr(request, "param", "learned"))).eval()


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(0, i, num_points=256, image_size=32) for i in range(3)]


def test_policy_inputs_carry_the_prompt_text_clouds_and_images(policy, samples):
    inputs = policy_inputs(policy, samples)
    assert inputs.input_ids.shape[0] == 3 and inputs.points.dtype == torch.float32
    assert torch.equal(inputs.points, torch.from_numpy(np.stack([s.points for s in samples])))
    assert inputs.has_image.tolist() == [True] * 3 and inputs.images.shape == (3, 3, 32, 32)
    decoded = policy.tokenizer.batch_decode(inputs.input_ids, skip_special_tokens=True)
    for text, sample in zip(decoded, samples):
        assert prompt_text(sample) in text

    points_only = policy_inputs(policy, samples, use_images=False)
    assert points_only.images is None and not points_only.has_image.any()
    assert points_only.input_ids.shape[1] < inputs.input_ids.shape[1]  # no image placeholder block

    continuous = policy_inputs(policy, samples[:1], quant=Quant(bins=0))
    assert prompt_text(samples[0], Quant(bins=0)) in policy.tokenizer.decode(continuous.input_ids[0])
    assert "2D in pixels" in prompt_text(samples[0], Quant(bins=0))


def test_policy_inputs_rows_without_an_image_get_none(policy, samples):
    mixed = [samples[0], replace(samples[1], image=None)]
    inputs = policy_inputs(policy, mixed)
    assert inputs.has_image.tolist() == [True, False] and inputs.images.shape[0] == 1


def test_policy_inputs_names_the_samples_whose_clouds_do_not_fit(policy, samples):
    small = generate_sample(0, 7, num_points=128, image_size=32)
    with pytest.raises(ValueError, match=rf"128 points: \['{small.uid}'\]; 256 points: \['{samples[0].uid}'"):
        policy_inputs(policy, [samples[0], small])
    xyz_only = replace(samples[1], points=samples[1].points[:, :3])
    with pytest.raises(ValueError, match=rf"sample '{xyz_only.uid}': points must be \(N, 6\)"):
        policy_inputs(policy, [samples[0], xyz_only])
    with pytest.raises(ValueError, match="at least one sample"):
        policy_inputs(policy, [])


@pytest.mark.parametrize("policy", FUSIONS, indirect=True)
def test_hf_engine_samples_distinct_groups_whose_logprobs_and_texts_the_policy_reproduces(policy, samples):
    engine = HFEngine(policy, version=5)
    inputs = policy_inputs(policy, samples)
    batch = engine.generate(inputs, [s.uid for s in samples], SamplingConfig(n=G, max_new_tokens=20, seed=0))
    assert batch.version == 5 and batch.uids == [s.uid for s in samples] and batch.group_size == G
    assert batch.response_ids.shape == batch.logprobs.shape and batch.response_ids.shape[0] == 3 * G
    assert batch.response_ids.dtype == torch.int64 and batch.logprobs.dtype == torch.float32
    for p in range(3):
        assert len({tuple(row.tolist()) for row in batch.response_ids[p * G : (p + 1) * G]}) == G
    for ids, mask, text in zip(batch.response_ids, batch.response_mask, batch.texts):
        assert text == policy.tokenizer.decode(ids[mask == 1], skip_special_tokens=True)
    assert batch.tokens_generated == int(batch.response_mask.sum()) and batch.seconds > 0
    assert (batch.logprobs[batch.response_mask == 0] == 0).all()
    with torch.no_grad():
        relearned = policy.logprobs(inputs.repeat_interleave(G), batch.response_ids, batch.response_mask)
    assert torch.allclose(batch.logprobs, relearned, atol=1e-4)


def test_min_new_tokens_makes_every_row_that_long_and_learner_and_engine_score_the_distribution_drawn_from(samples):
    policy = build_tiny_policy(seed=0).eval()
    # the stop tokens made likely at every step, so that without the knob most rows end early
    bias = torch.zeros(policy.llm.config.vocab_size)
    bias[policy.stop_ids] = 6.0
    policy.llm.get_output_embeddings().register_forward_hook(lambda module, args, out: out + bias)
    engine, inputs, uids = HFEngine(policy), policy_inputs(policy, samples), [s.uid for s in samples]
    free = engine.generate(inputs, uids, SamplingConfig(n=G, max_new_tokens=12, seed=0))
    assert (free.response_mask.sum(1) < 12).any()  # the test would pass without the knob otherwise
    for min_new, chunk in ((12, 0), (6, 4)):  # chunks of 4 start before and after position 6
        forced = engine.generate(inputs, uids, SamplingConfig(n=G, max_new_tokens=12, min_new_tokens=min_new, seed=0))
        if min_new == 12:
            assert forced.response_mask.sum(1).tolist() == [12] * (3 * G) and forced.tokens_generated == 12 * 3 * G
        # recorded after the stops are suppressed (as vLLM records them): what the learner recomputes, so that the
        # ratio starts at 1; the full distributions would put the likely stops' mass in every denominator
        args = (inputs.repeat_interleave(G), forced.response_ids, forced.response_mask)
        with torch.no_grad():
            relearned = policy.logprobs(*args, chunk=chunk, min_new_tokens=min_new)
            full = policy.logprobs(*args)
        assert torch.allclose(forced.logprobs, relearned, atol=1e-4)
        assert (forced.logprobs - full)[:, :min_new].min() > 0.1
    with pytest.raises(ValueError, match="min_new_tokens <= max_new_tokens"):
        SamplingConfig(max_new_tokens=12, min_new_tokens=13)


def test_hf_engine_loads_newer_weights_and_refuses_older_ones():
    policy = build_tiny_policy(seed=0)
    engine = HFEngine(policy)
    state = {k: v + 0.01 for k, v in policy.trainable_state_dict().items()}
    engine.load_weights(state, 2)
    assert engine.version == 2
    name = next(iter(state))
    assert torch.equal(policy.trainable_state_dict()[name], state[name])
    engine.load_weights(state, 2)  # re-publishing the same version is harmless
    with pytest.raises(ValueError, match="refusing weights of version 1: version 2 is already loaded"):
        engine.load_weights(state, 1)
    with pytest.raises(ValueError, match="trainable state mismatch"):
        engine.load_weights({"point_proj.0.weight": state["point_proj.0.weight"]}, 3)
    assert engine.version == 2


def test_sampling_config_rejects_impossible_settings():
    for bad in ({"n": 0}, {"max_new_tokens": 0}, {"temperature": 0.0}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError, match="SamplingConfig"):
            SamplingConfig(**bad)


def test_split_evenly_keeps_order_and_balances():
    for n in range(0, 12):
        for k in range(1, 5):
            shards = split_evenly(list(range(n)), k)
            assert len(shards) == k and [x for s in shards for x in s] == list(range(n))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="k >= 1"):
        split_evenly([1], 0)


def batch(version, uids, widths, pad=0, group=2):
    rows = len(uids) * group
    width = max(widths)
    mask = torch.zeros(rows, width, dtype=torch.long)
    for r, w in enumerate(widths * (rows // len(widths))):
        mask[r, :w] = 1
    ids = torch.randint(3, 50, (rows, width)).masked_fill(mask == 0, pad)
    return RolloutBatch(
        version,
        list(uids),
        ids,
        mask,
        -torch.rand(rows, width) * mask,
        [f"t{r}" for r in range(rows)],
        int(mask.sum()),
        1.0 + len(uids),
        pad,
    )


def test_concat_batches_pads_to_the_widest_shard_in_order():
    a, b = batch(3, ["a", "b"], [2, 5]), batch(3, ["c"], [3, 1])
    joined = concat_batches([a, b])
    assert joined.uids == ["a", "b", "c"] and joined.version == 3 and joined.response_ids.shape == (6, 5)
    assert torch.equal(joined.response_ids[4:, :3], b.response_ids) and (joined.response_ids[4:, 3:] == 0).all()
    assert torch.equal(joined.logprobs[:4], a.logprobs) and joined.texts == a.texts + b.texts
    assert joined.tokens_generated == a.tokens_generated + b.tokens_generated and joined.seconds == 3.0


def test_concat_batches_refuses_mixed_versions_or_groups():
    with pytest.raises(ValueError, match=r"disagree on version: \[3, 4\]"):
        concat_batches([batch(3, ["a"], [2]), batch(4, ["b"], [2])])
    with pytest.raises(ValueError, match="disagree on group_size"):
        concat_batches([batch(3, ["a"], [2]), batch(3, ["b"], [2], group=3)])
    with pytest.raises(ValueError, match="no batches"):
        concat_batches([])


def test_rollout_batch_checks_its_shapes_and_moves_to_cpu():
    good = batch(0, ["a", "b"], [2, 4])
    with pytest.raises(ValueError, match="do not match 4 texts"):
        replace(good, logprobs=good.logprobs[:, :2])
    with pytest.raises(ValueError, match="groups over 3 prompts"):
        replace(good, uids=["a", "b", "c"])
    wide = replace(good, response_ids=good.response_ids.t().contiguous().t())
    shipped = wide.cpu()
    assert shipped.response_ids.is_contiguous() and torch.equal(shipped.response_ids, good.response_ids)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_backend_without_vllm_names_the_gpu_extra(policy, tmp_path):
    with pytest.raises(ImportError, match=r"pip install 'pointrl\[gpu\]'"):
        VLLMEngine(tmp_path / "no-policy-needed")
    with pytest.raises(ImportError, match=r"pip install 'pointrl\[gpu\]'"):
        make_engine("vllm", policy, tmp_path)
    with pytest.raises(ValueError, match="unknown rollout backend 'tgi'"):
        make_engine("tgi", policy, tmp_path)


def test_vllm_weight_payload_is_the_saved_hf_model_under_its_own_names(tmp_path):
    from transformers import AutoModelForCausalLM

    from policies import tiny_config
    from rollout.vllm_engine import reload_groups

    for mode in ("full", "lora", "frozen"):
        policy = build_tiny_policy(seed=1, config=tiny_config(llm_mode=mode))
        policy.save_pretrained(tmp_path / mode / "base")  # the folder vLLM loads: LoRA's base is read from it
        with torch.no_grad():
            for name, p in policy.llm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)  # a trained adapter, so that the merge matters
        policy.save_pretrained(tmp_path / mode)
        saved = AutoModelForCausalLM.from_pretrained(tmp_path / mode / "llm").state_dict()
        groups = reload_groups(policy, policy.trainable_state_dict(), tmp_path / mode / "base" / "llm")
        weights = [pair for group in groups for pair in group]
        if mode == "frozen":
            assert weights == []
            continue
        assert len(weights) > 0 and all("lora" not in name and "base_layer" not in name for name, _ in weights)
        for name, tensor in weights:
            assert torch.allclose(tensor, saved[name], atol=1e-6), (mode, name)
        if mode == "lora":
            assert {name.rsplit(".", 2)[-2] for name, _ in weights} == set(policy.config.lora_target_modules)


def test_vllm_completions_become_right_padded_rows():
    from types import SimpleNamespace

    from rollout.vllm_engine import _pad_completions

    def completion(ids, lps):
        return SimpleNamespace(token_ids=ids, logprobs=[{t: SimpleNamespace(logprob=lp)} for t, lp in zip(ids, lps)])

    ids, mask, logprobs = _pad_completions([completion([5, 6, 2], [-0.5, -1.0, -0.25]), completion([7], [-2.0])], 0)
    assert ids.tolist() == [[5, 6, 2], [7, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert logprobs.tolist() == [[-0.5, -1.0, -0.25], [-2.0, 0.0, 0.0]] and logprobs.dtype == torch.float32
    with pytest.raises(RuntimeError, match="no log-probs"):
        _pad_completions([SimpleNamespace(token_ids=[1], logprobs=None)], 0)
