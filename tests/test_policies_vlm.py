"""PointVLM on the tiny configuration: prompts, embedding, log-probs, sampling, save/load, HF towers, dtypes."""

import json

import pytest
import torch
from safetensors.torch import save_file

from policies import PointVLM, PointVLMConfig, build_tiny_policy, tiny_config
from policies.generation import draw_tokens, stop_mask
from policies.inputs import FUSIONS
from rl.runtime.sharding import enable_activation_checkpointing
from tests.test_policies_fusion import views

PROMPTS = ["What is this object?", "What colour is it?", "Give the bounding box of the object in the image, please."]


def clouds(batch=3, n=256, seed=0):
    return torch.rand(batch, n, 6, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def images(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (40, 48, 3), generator=g, dtype=torch.uint8),
        None,
        torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8),
    ]


@pytest.fixture(scope="module")
def policy(request):
    """The tiny policy; with the fusion a test names (`parametrize("policy", FUSIONS, indirect=True)`), else learned."""
    return build_tiny_policy(seed=0, config=tiny_config(fusion=getattr(request, "param", "learned"))).eval()


@pytest.fixture(scope="module")
def inputs(policy):
    return policy.prepare(PROMPTS, clouds(), images(), views(clouds(), images()))


def test_prepare_left_pads_with_one_placeholder_block_per_row(policy, inputs):
    ids, mask = inputs.input_ids, inputs.attention_mask
    assert ids.shape[0] == 3 and inputs.has_image.tolist() == [True, False, True]
    assert inputs.images.shape == (2, 3, 32, 32)
    point_slots = (ids == policy.token_ids["<point_patch>"]).sum(1)
    image_slots = (ids == policy.token_ids["<image_patch>"]).sum(1)
    assert point_slots.tolist() == [33, 33, 33]  # num_groups + 1
    assert image_slots.tolist() == [16, 0, 16]  # (32 / 8) ** 2 patches
    assert (mask[:, -1] == 1).all() and (mask[:, :-1] <= mask[:, 1:]).all()  # padding only on the left
    assert (ids[mask == 0] == policy.tokenizer.pad_token_id).all()


def test_embed_places_visual_features_at_the_placeholders(policy, inputs):
    with torch.no_grad():
        embeds, mask = policy.embed(inputs)
        point_features, image_features = policy.visual_features(inputs)
        token_embeds = policy.llm.get_input_embeddings()(inputs.input_ids)
    assert embeds.shape == (*inputs.input_ids.shape, 64) and torch.equal(mask, inputs.attention_mask)
    point_slots = inputs.input_ids == policy.token_ids["<point_patch>"]
    image_slots = inputs.input_ids == policy.token_ids["<image_patch>"]
    for b in range(3):
        assert torch.equal(embeds[b][point_slots[b]], point_features[b])
    assert torch.equal(embeds[image_slots].view(2, 16, 64), image_features)
    text = ~(point_slots | image_slots)
    assert torch.equal(embeds[text], token_embeds[text])


@pytest.mark.parametrize("policy", FUSIONS, indirect=True)
def test_images_change_the_point_tokens_only_where_present(policy, inputs):
    without = policy.prepare(PROMPTS, clouds())
    with torch.no_grad():
        fused, _ = policy.visual_features(inputs)
        plain, _ = policy.visual_features(without)
    assert torch.equal(fused[1], plain[1])
    assert not torch.allclose(fused[0], plain[0]) and not torch.allclose(fused[2], plain[2])


def test_logprobs_match_a_plain_forward_of_each_unpadded_row(policy, inputs):
    texts = ['{"answer": "chair"}', "no", '{"bbox2d": [1, 20, 300, 999]}']
    response_ids, response_mask = policy.tokenize_responses(texts)
    with torch.no_grad():
        batched = policy.logprobs(inputs, response_ids, response_mask)
        embeds, mask = policy.embed(inputs)
        for b in range(3):
            prompt = embeds[b][mask[b] == 1]
            response = response_ids[b][response_mask[b] == 1]
            full = torch.cat([prompt, policy.llm.get_input_embeddings()(response)])[None]
            log_probs = torch.log_softmax(policy.llm(inputs_embeds=full).logits[0].float(), dim=-1)
            steps = torch.arange(len(response))
            expected = log_probs[len(prompt) - 1 + steps, response]
            assert torch.allclose(batched[b, : len(response)], expected, atol=1e-5)
            assert (batched[b, len(response) :] == 0).all()


@pytest.mark.parametrize("policy", FUSIONS, indirect=True)
def test_generate_samples_distinct_continuations_whose_logprobs_the_learner_reproduces(policy, inputs):
    out = policy.generate(inputs, num_return_sequences=4, max_new_tokens=16, seed=0)
    assert out.response_ids.shape[0] == 12 and len(out.texts) == 12
    for b in range(3):
        group = {tuple(r.tolist()) for r in out.response_ids[4 * b : 4 * b + 4]}
        assert len(group) == 4
    with torch.no_grad():
        relearned = policy.logprobs(inputs.repeat_interleave(4), out.response_ids, out.response_mask)
    assert torch.allclose(out.logprobs, relearned, atol=1e-4)
    assert (out.logprobs[out.response_mask == 1] < 0).all()
    again = policy.generate(inputs, num_return_sequences=4, max_new_tokens=16, seed=0)
    assert torch.equal(out.response_ids, again.response_ids)


@pytest.mark.parametrize("policy", FUSIONS, indirect=True)
def test_top_p_sampling_reports_the_untruncated_tempered_logprobs(policy, inputs):
    out = policy.generate(inputs, num_return_sequences=2, temperature=0.7, top_p=0.9, max_new_tokens=12, seed=1)
    with torch.no_grad():
        relearned = policy.logprobs(inputs.repeat_interleave(2), out.response_ids, out.response_mask, temperature=0.7)
    assert torch.allclose(out.logprobs, relearned, atol=1e-4)


def test_sampling_logprobs_are_those_of_the_tempered_distribution(policy, inputs):
    # the PPO ratio's denominator must be the policy that sampled: log-softmax(logits / T), as TRL and verl compute it
    out = policy.generate(inputs, num_return_sequences=2, temperature=0.5, max_new_tokens=12, seed=1)
    rows, ids, mask = inputs.repeat_interleave(2), out.response_ids, out.response_mask
    with torch.no_grad():
        tempered, raw = policy.logprobs(rows, ids, mask, temperature=0.5), policy.logprobs(rows, ids, mask)
    assert torch.allclose(out.logprobs, tempered, atol=1e-5)
    assert (out.logprobs - raw).abs().max() > 0.1


def test_greedy_generation_repeats_within_a_group(policy, inputs):
    out = policy.generate(inputs, num_return_sequences=2, do_sample=False, max_new_tokens=8)
    assert torch.equal(out.response_ids[0::2], out.response_ids[1::2])


def test_the_greedy_decode_loop_gives_transformers_generates_tokens(policy, inputs):
    # the loop shares each prompt's prefix across its samples; its logits must still be generate's (the sampled
    # paths' logits are checked against the learner's recomputation above)
    ours = policy.generate(inputs, num_return_sequences=3, max_new_tokens=14, do_sample=False)
    with torch.no_grad():
        embeds, mask = policy.embed(inputs)
        reference = policy.llm.generate(
            inputs_embeds=embeds.repeat_interleave(3, 0),
            attention_mask=mask.repeat_interleave(3, 0),
            max_new_tokens=14,
            do_sample=False,
            eos_token_id=policy.stop_ids,
            pad_token_id=policy.tokenizer.pad_token_id,
        )
    assert torch.equal(ours.response_ids, reference[:, : ours.response_ids.shape[1]])
    assert reference.shape[1] == ours.response_ids.shape[1]


def test_draw_tokens_samples_each_rows_distribution_and_never_a_zero_probability_token():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2], [0.7, 0.0, 0.1, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    torch.manual_seed(0)
    draws = torch.stack([draw_tokens(probs) for _ in range(20000)])  # [20000, 3]
    frequencies = torch.stack([torch.bincount(draws[:, row], minlength=5) for row in range(3)]) / 20000
    assert torch.allclose(frequencies, probs, atol=0.015)  # 4.5 standard errors at p = 0.5
    assert (probs.gather(1, draws.T) > 0).all()
    torch.manual_seed(0)
    assert torch.equal(draw_tokens(probs), draws[0])  # the global generator's seed fixes the draws


def test_stop_mask_keeps_the_first_stop_token():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5], [2, 9, 9, 9, 9]])
    assert stop_mask(ids, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_save_load_round_trip_gives_identical_logprobs(tmp_path, inputs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for mode in ("full", "lora"):
        policy = build_tiny_policy(seed=1, config=tiny_config(llm_mode=mode)).eval()
        if mode == "lora":  # make the adapter non-trivial so that the merge matters
            with torch.no_grad():
                for name, p in policy.llm.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.05)
        responses = policy.tokenize_responses(['{"answer": "lamp"}', "red", "[1, 2]"])
        with torch.no_grad():
            before = policy.logprobs(inputs, *responses)
        policy.save_pretrained(tmp_path / mode)
        loaded = PointVLM.from_pretrained(tmp_path / mode).eval()
        with torch.no_grad():
            after = loaded.logprobs(inputs, *responses)
        assert torch.allclose(before, after, atol=1e-5), mode
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / mode / "llm")
        assert not any("lora" in k for k in plain.state_dict())
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / mode / "llm")
        assert tokenizer.convert_tokens_to_ids("<point_patch>") == policy.token_ids["<point_patch>"]


def test_from_pretrained_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="pointvlm.json"):
        PointVLM.from_pretrained(tmp_path)


def test_hf_vision_tower_from_a_local_directory(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    tower_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    CLIPVisionModel(tower_config).save_pretrained(tmp_path / "clip")
    build_tiny_policy(out_dir=tmp_path / "tiny", seed=2)
    config = tiny_config(image={"kind": "hf", "hf_dir": str(tmp_path / "clip")})
    policy = PointVLM.from_components(tmp_path / "tiny" / "llm", config).eval()
    assert policy.config.image.width == 32 and policy.image_encoder.num_tokens == 16
    assert not any(p.requires_grad for p in policy.image_encoder.parameters())  # a pretrained tower stays frozen
    batch = policy.prepare(PROMPTS, clouds(), images())
    responses = policy.tokenize_responses(["a", "b", "c"])
    with torch.no_grad():
        before = policy.logprobs(batch, *responses)
    policy.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "image_tower" / "config.json").is_file()
    with torch.no_grad():
        after = PointVLM.from_pretrained(tmp_path / "saved").eval().logprobs(batch, *responses)
    assert torch.allclose(before, after, atol=1e-5)


def test_from_components_loads_a_pointllm_checkpoint(tmp_path):
    build_tiny_policy(out_dir=tmp_path / "tiny", seed=3)
    source = build_tiny_policy(seed=4)
    state = {f"model.point_backbone.{k}": v for k, v in source.point_encoder.state_dict().items()}
    state.update({f"model.point_proj.{k}": v for k, v in source.point_proj.state_dict().items()})
    save_file(state, tmp_path / "pointllm.safetensors")
    policy = PointVLM.from_components(tmp_path / "tiny" / "llm", tiny_config(), tmp_path / "pointllm.safetensors")
    points = clouds()
    with torch.no_grad():
        assert torch.equal(policy.point_encoder(points)[0], source.point_encoder(points)[0])
        features = torch.randn(3, 33, 64)
        assert torch.equal(policy.point_proj(features), source.point_proj(features))


def test_bfloat16_llm(inputs):
    policy = build_tiny_policy(seed=5, config=tiny_config(llm_dtype="bfloat16")).eval()
    embeds, _ = policy.embed(inputs)
    assert embeds.dtype == torch.bfloat16
    out = policy.generate(inputs, num_return_sequences=2, max_new_tokens=8, seed=0)
    with torch.no_grad():
        relearned = policy.logprobs(inputs.repeat_interleave(2), out.response_ids, out.response_mask)
    assert torch.isfinite(relearned).all()
    assert torch.allclose(out.logprobs, relearned, atol=0.02)  # bf16 cached vs full forward: ~2e-3 here


def test_bad_inputs_are_named(policy):
    with pytest.raises(ValueError, match="points must be"):
        policy.prepare(PROMPTS, clouds(batch=2))
    with pytest.raises(ValueError, match="2 images for 3 prompts"):
        policy.prepare(PROMPTS, clouds(), images()[:2])
    batch = policy.prepare(PROMPTS, clouds())
    with pytest.raises(ValueError, match="repeat_interleave"):
        policy.logprobs(batch, *policy.tokenize_responses(["a", "b"]))
    points_only = build_tiny_policy(seed=6, config=tiny_config(image=None))
    with pytest.raises(ValueError, match="no image encoder"):
        points_only.prepare(PROMPTS, clouds(), images())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_rollout_and_learner_agree():
    policy = build_tiny_policy(seed=7, config=tiny_config(llm_dtype="bfloat16")).to("cuda").eval()
    batch = policy.prepare(PROMPTS, clouds(), images())
    out = policy.generate(batch, num_return_sequences=3, max_new_tokens=12, seed=0)
    assert out.response_ids.device.type == "cuda"
    with torch.no_grad():
        relearned = policy.logprobs(batch.repeat_interleave(3), out.response_ids, out.response_mask)
    assert torch.allclose(out.logprobs, relearned, atol=0.05)


def test_config_round_trips_and_names_bad_keys():
    config = tiny_config(llm_mode="lora", lora_target_modules=["q_proj"])
    assert PointVLMConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown keys \\['groups'\\]"):
        PointVLMConfig.from_dict({"point": {"groups": 3}})
    with pytest.raises(ValueError, match="llm_mode='qlora'"):
        PointVLMConfig(llm_mode="qlora")


@pytest.mark.parametrize("chunk", [0, 3])
def test_expanded_prompts_score_like_repeated_ones_encoding_each_cloud_and_prefix_once(policy, inputs, chunk):
    owners = torch.tensor([0, 0, 1, 2, 2, 2])  # G samples of each prompt, as the learner's micro-batches hold them
    responses = policy.tokenize_responses(['{"answer": "chair"}', "{}", '{"answer": "red"}', "x", "{}", "{}"])
    encoded: list[int] = []
    layer_inputs: list[tuple[int, int]] = []
    hooks = [
        policy.point_encoder.encoder.register_forward_hook(lambda _m, args, _o: encoded.append(args[0].shape[0])),
        policy.llm.get_decoder()
        .layers[0]
        .register_forward_hook(lambda _m, args, _o: layer_inputs.append(tuple(args[0].shape[:2]))),
    ]
    try:
        repeated = policy.logprobs(inputs.select(owners), *responses, chunk=chunk)
        expanded = policy.logprobs(inputs, *responses, chunk=chunk, expand=owners)
    finally:
        for hook in hooks:
            hook.remove()
    assert encoded == [6, 3]  # the expanded call encoded the three clouds once each
    prompt, steps = inputs.input_ids.shape[1], responses[0].shape[1]
    # the repeated call ran 6 full sequences; the expanded one 3 prefixes, then 6 responses on their cached keys
    assert layer_inputs == [(6, prompt + steps), (3, prompt), (6, steps - 1)]
    assert torch.allclose(expanded, repeated, atol=1e-5)
    # and the gradients through the shared encoding and the shared prefix are the sums over the samples sharing them
    weights = torch.randn(6, 1)
    grads = []
    for call in (
        lambda: policy.logprobs(inputs.select(owners), *responses, chunk=chunk),
        lambda: policy.logprobs(inputs, *responses, chunk=chunk, expand=owners),
    ):
        policy.zero_grad()
        (call() * weights).sum().backward()
        grads.append(
            [
                policy.point_proj[0].weight.grad.clone(),
                policy.llm.get_decoder().layers[0].mlp.up_proj.weight.grad.clone(),
            ]
        )
    for repeated_grad, expanded_grad in zip(*grads):
        assert torch.allclose(repeated_grad, expanded_grad, atol=1e-5)


def test_activation_checkpointing_scores_expanded_prompts_on_full_sequences(inputs):
    # checkpointed layers keep no KV cache, so there the prefix cannot be shared: the full sequences run instead
    policy = build_tiny_policy(seed=0).train()
    owners = torch.tensor([0, 0, 1])
    responses = policy.tokenize_responses(['{"answer": "chair"}', "{}", "x"])
    repeated = policy.logprobs(inputs.select(owners), *responses)
    enable_activation_checkpointing(policy)
    expanded = policy.logprobs(inputs, *responses, expand=owners)
    assert torch.allclose(expanded, repeated, atol=1e-5)
    expanded.sum().backward()  # through the checkpointed layers
