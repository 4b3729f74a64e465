"""PointVLM over a Qwen-VL folder, each family (Qwen2.5-VL, Qwen3-VL): a tiny random checkpoint in the real HF layout
(transformers' own config classes, `policies.tiny.build_tiny_qwen_vl`), loaded through `PointVLM.from_components` /
`from_pretrained`. Every test runs for both families (the `family` fixture)."""

import json

import pytest
import torch

from policies import PointVLM, tiny_config
from policies.inputs import FUSIONS
from policies.qwen_vl import IMAGE_PAD, QWEN_VL_FAMILIES, QWEN_VL_TYPES, QwenVLPointVLM
from policies.tiny import TINY_QWEN_VL, build_tiny_qwen_vl
from tests.test_policies_fusion import views

PROMPTS = ["What is this object?", "What colour is it?", "Give the bounding box of the object in the image, please."]
SIZES = {(40, 48): (1, 10, 12), (32, 32): (1, 8, 8), (64, 24): (1, 16, 6)}  # image (H, W) -> grid_thw at 4 px / patch


def clouds(batch=3, n=256, seed=0):
    return torch.rand(batch, n, 6, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def images(sizes=((40, 48), None, (32, 32)), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [None if s is None else torch.randint(0, 256, (*s, 3), generator=g, dtype=torch.uint8) for s in sizes]


@pytest.fixture(scope="module", params=QWEN_VL_TYPES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory, family):
    return build_tiny_qwen_vl(tmp_path_factory.mktemp(family) / "tiny", seed=0, family=family)


@pytest.fixture(scope="module")
def policy(qwen_dir, request):
    """The policy; with the fusion a test names (`parametrize("policy", FUSIONS, indirect=True)`), else learned."""
    return PointVLM.from_components(qwen_dir, tiny_config(fusion=getattr(request, "param", "learned"))).eval()


@pytest.fixture(scope="module")
def inputs(policy):
    return policy.prepare(PROMPTS, clouds(), images(), views(clouds(), images()))


def test_the_folder_is_the_real_layout_and_loads_through_the_public_path(family, qwen_dir, policy):
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in qwen_dir.iterdir()
    }
    assert json.loads((qwen_dir / "config.json").read_text())["model_type"] == family
    assert isinstance(policy, QwenVLPointVLM) and type(policy.llm).__name__ == TINY_QWEN_VL[family][1]
    assert policy.image_encoder.tower is policy.llm.model.visual  # one tower, the model's own
    assert policy.config.image.kind == "qwen_vl" and policy.config.image.width == 64  # the merger's output width
    assert policy.token_ids["<image_patch>"] == policy.tokenizer.convert_tokens_to_ids(IMAGE_PAD)


def test_image_tokens_follow_each_images_size(policy):
    sizes = [(40, 48), (32, 32), (64, 24)]
    batch = policy.prepare(PROMPTS, clouds(), images(sizes))
    grids = [SIZES[s] for s in sizes]
    assert batch.image_grid_thw.tolist() == [list(g) for g in grids]
    counts = [t * h * w // 4 for t, h, w in grids]  # 2x2 patches merge into one token
    assert counts == [30, 16, 24]
    assert batch.images.shape == (sum(t * h * w for t, h, w in grids), 3 * 2 * 4 * 4)
    ids = batch.input_ids
    assert (ids == policy.token_ids["<image_patch>"]).sum(1).tolist() == counts
    assert (ids == policy.token_ids["<point_patch>"]).sum(1).tolist() == [33, 33, 33]
    with torch.no_grad():
        embeds, mask = policy.embed(batch)
        point_features, image_features = policy.visual_features(batch)
    assert embeds.shape == (*ids.shape, 64) and torch.equal(mask, batch.attention_mask)
    assert point_features.shape == (3, 33, 64) and image_features.shape == (sum(counts), 64)
    assert torch.equal(embeds[ids == policy.token_ids["<image_patch>"]], image_features)
    # rows picked out of a batch carry their own image's patches
    picked = batch.select([2, 0])
    alone = policy.prepare([PROMPTS[2], PROMPTS[0]], clouds()[[2, 0]], [images(sizes)[2], images(sizes)[0]])
    assert torch.equal(picked.image_grid_thw, alone.image_grid_thw) and torch.equal(picked.images, alone.images)
    with torch.no_grad():
        for a, b in zip(policy.visual_features(picked), policy.visual_features(alone)):
            assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("policy", FUSIONS, indirect=True)
def test_images_change_the_point_tokens_only_where_present(policy, inputs):
    with torch.no_grad():
        fused, _ = policy.visual_features(inputs)
        plain, _ = policy.visual_features(policy.prepare(PROMPTS, clouds()))
    assert torch.equal(fused[1], plain[1])
    assert not torch.allclose(fused[0], plain[0]) and not torch.allclose(fused[2], plain[2])


@pytest.mark.parametrize("policy", FUSIONS, indirect=True)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_hf_rollout_logprobs_equal_the_learners(policy, inputs, temperature):
    out = policy.generate(inputs, num_return_sequences=3, temperature=temperature, max_new_tokens=12, seed=0)
    assert out.response_ids.shape[0] == 9
    with torch.no_grad():
        relearned = policy.logprobs(
            inputs.repeat_interleave(3), out.response_ids, out.response_mask, temperature=temperature
        )
        chunked = policy.logprobs(
            inputs.repeat_interleave(3), out.response_ids, out.response_mask, temperature=temperature, chunk=4
        )
    assert (out.response_mask.sum(1) > 1).all()
    assert (out.logprobs - relearned).abs().max() < 1e-4
    assert (chunked - relearned).abs().max() < 1e-5


def test_positions_are_text_positions_on_all_three_mrope_rows(policy, inputs):
    """What the learner passes (B, L) is what the model computes from (3, B, L) equal rows; an M-RoPE grid layout
    for the image tokens would give other log-probs, so the rollout test above would see a mismatch."""
    responses = policy.tokenize_responses(['{"answer": "chair"}', "red", "[1, 2]"])
    with torch.no_grad():
        embeds, mask = policy.embed(inputs)
    full_mask = torch.cat([mask, responses[1]], 1)
    full = torch.cat([embeds, policy.llm.get_input_embeddings()(responses[0])], 1)
    text = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 0)
    with torch.no_grad():
        learner = policy.logprobs(inputs, *responses)
        explicit = policy.llm(inputs_embeds=full, attention_mask=full_mask, position_ids=text[None].expand(3, -1, -1))
        shifted = text[None].repeat(3, 1, 1)
        shifted[1:] = shifted[1:] // 2  # any other height/width positions
        other = policy.llm(inputs_embeds=full, attention_mask=full_mask, position_ids=shifted)
    steps = responses[0].shape[1]
    for logits, same in ((explicit.logits, True), (other.logits, False)):
        lp = logits[:, -(steps + 1) : -1].float().log_softmax(-1).gather(-1, responses[0][..., None]).squeeze(-1)
        assert torch.allclose(lp * responses[1], learner, atol=1e-5) == same


def test_qwen3_vl_deepstack_features_are_left_out_on_every_path(family, policy, inputs):
    """Qwen3-VL's tower also makes DeepStack features, which the model adds at the image tokens after its first
    layers when it encodes the pixels itself; given embeddings (all that vLLM's prompt_embeds carry) it runs without
    them, so learner, HF rollout and vLLM agree. They would change the model's output (what the choice gives up)."""
    if family != "qwen3_vl":
        pytest.skip("DeepStack is Qwen3-VL's")
    with torch.no_grad():
        deepstack = policy.llm.model.visual(inputs.images, grid_thw=inputs.image_grid_thw).deepstack_features
        embeds, mask = policy.embed(inputs)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        run = dict(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        learner = policy.llm.model(**run).last_hidden_state  # the module the learner and generate run
        language_model = policy.llm.model.language_model
        plain = language_model(**run).last_hidden_state
        slots = inputs.input_ids == policy.token_ids["<image_patch>"]
        deep = language_model(**run, visual_pos_masks=slots, deepstack_visual_embeds=deepstack).last_hidden_state
    assert len(deepstack) == 1 and deepstack[0].shape == (int(slots.sum()), 64)  # one merger in the tiny tower
    assert torch.equal(learner[mask == 1], plain[mask == 1])
    print(f"\nlast hidden state with DeepStack vs without: max |diff| {(deep - plain)[mask == 1].abs().max():.2e}")
    assert (deep - plain)[mask == 1].abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_save_load_round_trip(family, qwen_dir, inputs, tmp_path, mode):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText

    policy = PointVLM.from_components(qwen_dir, tiny_config(llm_mode=mode)).eval()
    if mode == "lora":  # a non-trivial adapter, so that the merge matters
        with torch.no_grad():
            for name, p in policy.llm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
    responses = policy.tokenize_responses(['{"answer": "lamp"}', "red", "[1, 2]"])
    with torch.no_grad():
        before = policy.logprobs(inputs, *responses)
    policy.save_pretrained(tmp_path / "saved")
    assert {p.name for p in (tmp_path / "saved").iterdir()} == {"llm", "pointvlm.json", "vision.safetensors"}
    loaded = PointVLM.from_pretrained(tmp_path / "saved").eval()
    assert isinstance(loaded, QwenVLPointVLM) and loaded.config == policy.config
    with torch.no_grad():
        after = loaded.logprobs(loaded.prepare(PROMPTS, clouds(), images()), *responses)
    if mode == "full":
        assert torch.equal(before, after)
    else:  # W + BA merged into plain weights: equal up to float rounding
        assert torch.allclose(before, after, atol=1e-5)
    plain = AutoModelForImageTextToText.from_pretrained(tmp_path / "saved" / "llm")  # still a Qwen-VL folder
    assert type(plain).__name__ == TINY_QWEN_VL[family][1]
    assert not any("lora" in k for k in plain.state_dict())
    assert AutoImageProcessor.from_pretrained(tmp_path / "saved" / "llm").patch_size == 4


def test_lora_touches_the_language_model_only(qwen_dir):
    from peft.tuners.lora import LoraLayer

    policy = PointVLM.from_components(qwen_dir, tiny_config(llm_mode="lora"))
    adapted = [name for name, m in policy.llm.named_modules() if isinstance(m, LoraLayer)]
    assert len(adapted) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 decoder layers
    assert all(".language_model." in name for name in adapted)
    trainable = [name for name, p in policy.named_parameters() if p.requires_grad]
    in_llm = [name for name in trainable if name.startswith("llm.")]
    assert in_llm and all("lora_" in name and ".language_model." in name for name in in_llm)
    assert not any(name.startswith(("image_encoder.", "point_encoder.")) for name in trainable)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_one_optimizer_step_leaves_the_frozen_parts_unchanged(qwen_dir, inputs, mode):
    policy = PointVLM.from_components(qwen_dir, tiny_config(llm_mode=mode))
    policy.train()
    frozen = {name: p.detach().clone() for name, p in policy.named_parameters() if not p.requires_grad}
    trained = {name: p.detach().clone() for name, p in policy.named_parameters() if p.requires_grad}
    assert all(
        name in frozen for name, _ in policy.named_parameters() if name.startswith(("image_encoder.", "point_encoder."))
    )
    assert any(name.startswith("image_encoder.tower.") for name in frozen)  # the vision tower, named once
    assert {name.split(".")[0] for name in trained} == {"fusion", "point_proj", "llm"}
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    responses = policy.tokenize_responses(['{"answer": "chair"}', "red", "[1, 2]"])
    (-policy.logprobs(inputs, *responses).sum()).backward()
    optimizer.step()
    params = dict(policy.named_parameters())
    for name, value in frozen.items():
        assert params[name].grad is None and torch.equal(params[name], value), name
    for part in ("fusion.", "point_proj.", "llm."):
        assert any(not torch.equal(params[n], v) for n, v in trained.items() if n.startswith(part)), part


def test_points_only_policy_over_the_qwen_folder(qwen_dir):
    policy = PointVLM.from_components(qwen_dir, tiny_config(image=None)).eval()
    assert policy.image_encoder is None and policy.config.image is None
    batch = policy.prepare(PROMPTS[:2], clouds(batch=2))
    out = policy.generate(batch, num_return_sequences=2, max_new_tokens=6, seed=0)
    with torch.no_grad():
        relearned = policy.logprobs(batch.repeat_interleave(2), out.response_ids, out.response_mask)
    assert (out.logprobs - relearned).abs().max() < 1e-4
    with pytest.raises(ValueError, match="no image encoder"):
        policy.prepare(PROMPTS, clouds(), images())


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_the_language_model_exported_for_vllm_is_its_text_model_with_the_same_logits(
    family, qwen_dir, inputs, tmp_path, mode
):
    """What vLLM loads for a Qwen-VL policy (rollout/vllm_qwen.py): the language model as a plain Qwen2 / Qwen3, whose
    1-D RoPE at the text positions is M-RoPE with three equal rows (Qwen3-VL's interleaved layout too); a weight sync
    sends that folder's names."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from policies.hf_llm import base_llm
    from rollout.vllm_engine import reload_groups
    from rollout.vllm_qwen import export_text_model, text_config

    policy = PointVLM.from_components(qwen_dir, tiny_config(llm_mode=mode)).eval()
    with torch.no_grad():
        for name, p in policy.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a trained adapter, so that the merge matters
    export_text_model(policy, tmp_path / "text")
    text = AutoModelForCausalLM.from_pretrained(tmp_path / "text").eval()
    assert type(text).__name__ == QWEN_VL_FAMILIES[family][0] and "mrope_section" not in text.config.rope_parameters
    with torch.no_grad():
        embeds, mask = policy.embed(inputs)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ours = base_llm(policy.llm, policy.config.llm_mode)(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions
        ).logits
        exported = text(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    if mode == "full":  # the same arithmetic: bit for bit
        assert torch.equal(ours[mask == 1], exported[mask == 1])
    else:  # against W + BA merged into plain weights: equal up to float rounding
        assert (ours - exported)[mask == 1].abs().max() < 1e-5
    with safe_open(tmp_path / "text" / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert not any("visual" in n or "lora" in n for n in names) and "lm_head.weight" not in names  # tied
    assert ("model.layers.0.self_attn.q_norm.weight" in names) == (family == "qwen3_vl")  # Qwen3's q/k RMSNorm
    payload = [
        name for group in reload_groups(policy, policy.trainable_state_dict(), tmp_path / "text") for name, _ in group
    ]
    assert payload and set(payload) <= names | {"lm_head.weight"}
    # what would make the text model differ from the language model is refused in one line
    config = policy.llm.config if mode == "full" else base_llm(policy.llm, policy.config.llm_mode).config
    config.get_text_config().rope_parameters = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}
    with pytest.raises(ValueError, match="RoPE type 'yarn' is not supported"):
        text_config(config, tied=True)
