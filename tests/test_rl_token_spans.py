"""Character spans -> token masks (rl/algorithms/token_spans.py) on the real tiny byte-level BPE tokenizer."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.tiny import build_tiny_tokenizer
from rewards.parse import parse_output
from rl.algorithms.advantages import ROUTED_FIELDS
from rl.algorithms.token_spans import batch_field_masks, batch_token_char_offsets, field_token_masks, token_char_offsets

ALL_FIELDS = ("answer", "description", *ROUTED_FIELDS)
TARGET = (
    '{"answer": "chair", "description": "a café chair, 中文 🙂 naïve", "bbox2d": [12, 340, 5, 999], '
    '"bbox3d": [1, 0, 5, 9, 99, 999], "kpts2d": [[1, 2], [30, 400]], "kpts3d": [[1, 2, 3]]}'
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def prefix_definition(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """The rule, quadratically: token i spans from the complete characters of decode(ids[:i]) to those of
    decode(ids[:i+1]), plus the character it leaves incomplete (shown as a trailing U+FFFD)."""
    prefixes = [tokenizer.decode(ids[:i], skip_special_tokens=True) for i in range(len(ids) + 1)]
    complete = [len(prefix.rstrip("\ufffd")) for prefix in prefixes]
    return [(complete[i], complete[i + 1] + prefixes[i + 1].endswith("\ufffd")) for i in range(len(ids))]


def assert_monotone_cover(offsets: list[tuple[int, int]], text: str) -> None:
    """Starts and ends never decrease, the ranges cover every character, and the last one ends the text."""
    assert offsets[-1][1] == len(text)
    assert all(0 <= start <= end <= len(text) for start, end in offsets)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(offsets, offsets[1:]))
    assert all(b[0] <= a[1] for a, b in zip(offsets, offsets[1:]))  # no gap between neighbours
    assert offsets[0][0] == 0


def test_offsets_cover_each_token_text(tokenizer):
    ids = tokenizer.encode(TARGET, add_special_tokens=False)
    offsets = token_char_offsets(tokenizer, ids)
    assert len(offsets) == len(ids)
    assert_monotone_cover(offsets, TARGET)
    assert offsets == prefix_definition(tokenizer, ids)
    ascii_tokens = [(i, s, e) for i, (s, e) in enumerate(offsets) if TARGET[s:e].isascii() and e > s]
    assert ascii_tokens and all(TARGET[s:e] == tokenizer.decode([ids[i]]) for i, s, e in ascii_tokens)


def test_each_byte_token_of_a_multibyte_character_spans_that_character(tokenizer):
    text = "é中🙂a"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text.encode())  # the tiny BPE writes these characters one byte per token
    offsets = token_char_offsets(tokenizer, ids)
    assert_monotone_cover(offsets, text)
    assert [text[s:e] for s, e in offsets] == [c for c in text for _ in c.encode()]


def test_special_tokens_get_empty_ranges_where_they_stand(tokenizer):
    body = tokenizer.encode('{"answer": "mug"}', add_special_tokens=False)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = body + [eos, pad, pad]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    offsets = token_char_offsets(tokenizer, ids)
    assert offsets[len(body) :] == [(len(text), len(text))] * 3
    assert offsets[: len(body)] == token_char_offsets(tokenizer, body)
    assert token_char_offsets(tokenizer, [pad, pad]) == [(0, 0), (0, 0)]
    assert token_char_offsets(tokenizer, []) == []


def test_windowed_offsets_match_the_prefix_definition_far_into_a_long_text(tokenizer):
    text = " ".join([TARGET] * 6)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 300
    assert token_char_offsets(tokenizer, ids) == prefix_definition(tokenizer, ids)


def test_one_batched_decode_gives_each_rows_own_offsets(tokenizer):
    # a plain text, a long one, a byte soup cut inside a character (prefix decodes), special tokens only, nothing
    ids = tokenizer.encode(TARGET, add_special_tokens=False)
    soup = tokenizer.encode("中文🙂", add_special_tokens=False)[:-1] + ids[:5]
    pad = tokenizer.pad_token_id
    rows = [ids, ids * 3, soup, [pad, pad], []]
    assert batch_token_char_offsets(tokenizer, rows) == [prefix_definition(tokenizer, r) for r in rows[:3]] + [
        [(0, 0), (0, 0)],
        [],
    ]


def test_windows_keep_a_sentencepiece_decoder_context():
    """A Metaspace decoder drops the space of a sequence's first word only: token i's window must see the words
    before it, or ' chair' deep in the text would be measured as 'chair'."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    corpus = ["the red chair is naïve", "a café 中文 chair", '{"bbox2d": [1, 2]}']
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "</s>"], show_progress=False)
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    text = " ".join(["the café chair is red naïve 中文"] * 3)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text and len(ids) > 2 * 8
    offsets = token_char_offsets(tokenizer, ids)
    assert offsets == prefix_definition(tokenizer, ids)
    assert [text[s:e] for s, e in offsets][-3:] == [" red", " naïve", " 中文"]


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab {}[]",:0123456789éü中文🙂ß€')), max_size=40))
def test_offsets_equal_the_prefix_definition_on_any_text(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    offsets = token_char_offsets(tokenizer, ids)
    assert offsets == prefix_definition(tokenizer, ids)
    if ids:
        assert_monotone_cover(offsets, text)


def test_byte_soup_still_gives_monotone_ranges_over_the_whole_text(tokenizer):
    rng = random.Random(0)
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    for _ in range(30):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 60))]
        content = [i for i in ids if i not in special]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        offsets = token_char_offsets(tokenizer, ids)
        assert len(offsets) == len(ids)
        if content:
            assert_monotone_cover([r for i, r in zip(ids, offsets) if i not in special], text)
        assert all(start == end for i, (start, end) in zip(ids, offsets) if i in special)


def test_overlap_rule_straddling_and_ties():
    offsets = [(0, 3), (3, 6), (6, 9), (9, 12)]
    masks = field_token_masks(offsets, {"a": [4, 7], "b": [2, 3]}, ("a", "b"))
    assert masks["a"].tolist() == [False, True, True, False]  # the span straddles tokens 1 and 2
    assert masks["b"].tolist() == [True, False, False, False]  # a span starting mid-token takes that token
    masks = field_token_masks(offsets, {"a": [0, 7], "b": [7, 12]}, ("a", "b"))
    assert masks["a"].tolist() == [True, True, False, False]  # token 2 overlaps a by 1 char and b by 2
    assert masks["b"].tolist() == [False, False, True, True]
    masks = field_token_masks(offsets, {"a": [0, 4], "b": [5, 12]}, ("b", "a"))
    assert masks["b"].tolist() == [False, True, True, True]  # token 1 overlaps each by 1: the earlier name wins
    assert masks["a"].tolist() == [True, False, False, False]


def test_null_missing_and_bad_spans():
    offsets = [(0, 2), (2, 5), (5, 5)]
    masks = field_token_masks(offsets, {"a": None, "b": [0, 5]}, ("a", "b"))
    assert not masks["a"].any() and masks["b"].tolist() == [True, True, False]
    assert not any(m.any() for m in field_token_masks(offsets, None, ("a", "b")).values())
    with pytest.raises(ValueError, match="lacks the field 'b'"):
        field_token_masks(offsets, {"a": [0, 1]}, ("a", "b"))
    with pytest.raises(ValueError, match=r"a: span \[3, 9\)"):
        field_token_masks(offsets, {"a": [3, 9]}, ("a",))


def test_end_to_end_spans_from_the_parser_select_the_value_tokens(tokenizer):
    ids = tokenizer.encode(TARGET, add_special_tokens=False)
    parsed = parse_output(TARGET)
    assert set(parsed.fields) == set(ALL_FIELDS)
    spans = {name: list(span) for name, (_, span) in parsed.fields.items()}
    offsets = token_char_offsets(tokenizer, ids)
    masks = field_token_masks(offsets, spans, ALL_FIELDS)
    assert not torch.stack(list(masks.values())).sum(0).gt(1).any()
    for name, (start, end) in spans.items():
        rows = masks[name].nonzero().flatten().tolist()
        assert rows == list(range(rows[0], rows[-1] + 1))  # one contiguous run of tokens
        assert TARGET[start:end] in tokenizer.decode([ids[i] for i in rows])
        first, last = offsets[rows[0]], offsets[rows[-1]]
        assert first[0] <= start < first[1] and last[0] < end <= last[1]  # first and last tokens touch the edges
    straddling = [offsets[i] for i in masks["bbox2d"].nonzero().flatten().tolist()]
    assert TARGET[slice(*straddling[0])] == " [" and TARGET[slice(*straddling[-1])] == "],"


def test_batch_masks_pad_rows_and_keep_them_apart(tokenizer):
    texts = [TARGET, '{"answer": "mug", "description": "ü", "bbox2d": [1, 2, 3, 4]}']
    rows = [tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id] for t in texts]
    length = max(map(len, rows)) + 2
    ids = torch.full((2, length), tokenizer.pad_token_id)
    mask = torch.zeros(2, length, dtype=torch.long)
    ids[0, 2 : 2 + len(rows[0])] = torch.tensor(rows[0])  # padding on both sides
    mask[0, 2 : 2 + len(rows[0])] = 1
    ids[1, : len(rows[1])] = torch.tensor(rows[1])
    mask[1, : len(rows[1])] = 1
    spans = [{name: list(span) for name, (_, span) in parse_output(t).fields.items()} for t in texts]
    spans[1] |= {"bbox3d": None, "kpts2d": None, "kpts3d": None}
    masks = batch_field_masks(tokenizer, ids, mask, spans, ROUTED_FIELDS)
    for row, text in enumerate(texts):
        on = mask[row].bool()
        single = field_token_masks(token_char_offsets(tokenizer, ids[row, on]), spans[row], ROUTED_FIELDS)
        for name in ROUTED_FIELDS:
            assert masks[name].shape == (2, length) and masks[name].dtype == torch.bool
            assert not masks[name][row, ~on].any()
            assert torch.equal(masks[name][row, on], single[name])
    assert masks["bbox2d"][1].any() and not masks["bbox3d"][1].any()
    with pytest.raises(ValueError, match="row 1: bbox2d"):
        batch_field_masks(tokenizer, ids, mask, [spans[0], spans[0]], ("bbox2d",))
