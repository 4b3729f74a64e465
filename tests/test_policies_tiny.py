"""The tiny tokenizer and policy: built locally, deterministic, sensible on the output schema."""

import json
import time

import torch

from policies import SPECIAL_TOKENS, build_tiny_policy, build_tiny_tokenizer


def test_tokenizer_round_trips_the_schema_and_reads_a_bin_as_one_token():
    tok = build_tiny_tokenizer()
    assert 900 <= len(tok) <= 2048
    answer = {
        "answer": "chair",
        "description": "a red chair with four legs",
        "bbox2d": [12, 407, 999, 0],
        "bbox3d": [0, 1, 2, 997, 998, 999],
        "kpts2d": [[5, 60]],
        "kpts3d": [[700, 8, 90]],
    }
    text = json.dumps(answer)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    pieces = tok.convert_ids_to_tokens(tok("[407, 999]", add_special_tokens=False)["input_ids"])
    assert [p for p in pieces if any(ch.isdigit() for ch in p)] == ["407", "999"]
    for word in ("answer", "description", "bbox", "kpts", " chair", " red"):  # the corpus taught it the schema
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word


def test_special_tokens_are_atomic_and_the_chat_template_is_chatml():
    tok = build_tiny_tokenizer()
    for token in SPECIAL_TOKENS:
        assert tok(token, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(token)]
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.padding_side == "left"


def test_tiny_policy_builds_fast_deterministically_and_keeps_the_callers_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    start = time.monotonic()
    a = build_tiny_policy(seed=7)
    assert time.monotonic() - start < 20
    assert torch.equal(torch.rand(1), expected_next)
    b = build_tiny_policy(seed=7)
    c = build_tiny_policy(seed=8)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.llm.lm_head.weight, c.llm.lm_head.weight)
    assert a.llm.config.hidden_size == 64 and a.llm.config.num_hidden_layers == 2


def test_saved_tiny_policy_is_a_plain_hf_folder(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build_tiny_policy(out_dir=tmp_path, seed=0)
    assert {p.name for p in tmp_path.iterdir()} == {"llm", "pointvlm.json", "vision.safetensors"}
    llm = AutoModelForCausalLM.from_pretrained(tmp_path / "llm")
    tok = AutoTokenizer.from_pretrained(tmp_path / "llm")
    assert type(llm).__name__ == "Qwen2ForCausalLM" and llm.config.vocab_size == len(tok)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"


def test_a_reloaded_policy_tokenizes_exactly_as_the_one_that_was_saved(tmp_path):
    from policies import PointVLM, load_tokenizer

    built = build_tiny_policy(out_dir=tmp_path, seed=0)
    text = '{"answer":"chair","bbox2d":[11,23,53,45],"kpts3d":[[407,999,0]]}'
    expected = built.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert PointVLM.from_pretrained(tmp_path).tokenizer(text, add_special_tokens=False)["input_ids"] == expected
    assert load_tokenizer(tmp_path / "llm")(text, add_special_tokens=False)["input_ids"] == expected
