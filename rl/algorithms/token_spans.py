"""From the reward service's character spans to token masks: which response tokens wrote which field (GRCA eq. 6).

Token i's character range in `text = tokenizer.decode(ids, skip_special_tokens=True)` comes from the cumulative
decoded lengths (the paper's cumulative decoded offsets): it starts where the decoded prefix ids[:i] ends and ends
where ids[:i+1] ends. A byte-level token that stops inside a multi-byte character leaves a U+FFFD placeholder at the
end of its prefix; that placeholder is not counted as decoded, and the token's range reaches one character further,
over the character it is writing. So every token that wrote some byte of a character overlaps it (the ranges of
tokens sharing a character overlap), and a field's tokens decode to its whole value. Starts never decrease, nor do the
ends of content tokens; ends are clamped to len(text) and the last content token ends at len(text) (what a truncated
or byte-soup response leaves over lands there). Special tokens (eos, pad, vision markers) decode to nothing and get
an empty range where the next content token starts (at len(text) after the last one).

The prefix lengths are computed incrementally: token i's length increment is measured in a window of the preceding
`_CONTEXT_TOKENS` tokens, so one call decodes O(T) short windows instead of T prefixes. The window holds at least one
complete character before token i, which makes the increment exact for valid UTF-8 (tests compare it with the
quadratic definition); a text with invalid bytes (a sampled byte soup shows U+FFFD) uses the prefix decodes directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import accumulate

import torch
from torch import Tensor

_REPLACEMENT = "\ufffd"
_MISSING = object()
# > 2 x 4, the most bytes one UTF-8 character spans: a window always holds a whole character ahead of any partial one
_CONTEXT_TOKENS = 8


def _special_ids(tokenizer) -> set[int]:
    """The ids `decode(..., skip_special_tokens=True)` drops: added tokens flagged special (`all_special_ids` can miss
    some, e.g. the Point-VLM markers added with `add_tokens(..., special_tokens=True)`)."""
    return {token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special}


def _complete_length(text: str) -> int:
    """Characters of a decoded prefix, not counting the placeholder of a character still incomplete at its end."""
    return len(text.rstrip(_REPLACEMENT))


def _windows(ids: list[int]) -> list[list[int]]:
    """For each token i, the windows ids[i-w:i] and ids[i-w:i+1] (w = _CONTEXT_TOKENS) whose decodes differ by it."""
    windows = []
    for i in range(len(ids)):
        start = max(0, i - _CONTEXT_TOKENS)
        windows += [ids[start:i], ids[start : i + 1]]
    return windows


def _windowed_lengths(texts: list[str]) -> tuple[list[int], list[bool]]:
    """From the decodes of `_windows`: per token, the complete characters of the decoded prefix ids[:i+1] and
    whether a character is left pending."""
    befores, afters = texts[::2], texts[1::2]
    increments = (_complete_length(after) - _complete_length(before) for before, after in zip(befores, afters))
    return list(accumulate(increments)), [after.endswith(_REPLACEMENT) for after in afters]


def _prefix_lengths(tokenizer, ids: list[int]) -> tuple[list[int], list[bool]]:
    """What `_windowed_lengths` returns, from the T prefix decodes themselves."""
    texts = tokenizer.batch_decode([ids[: i + 1] for i in range(len(ids))], skip_special_tokens=True)
    return [_complete_length(text) for text in texts], [text.endswith(_REPLACEMENT) for text in texts]


def _offsets(ids: list[int], special: set[int], text: str, lengths: list[int], pending: list[bool]):
    """Token character ranges from the content tokens' prefix lengths (see the module docstring)."""
    ranges, start = [], 0
    for complete_end, writing in zip(accumulate(lengths, max), pending):
        complete_end = min(complete_end, len(text))
        ranges.append((start, min(complete_end + writing, len(text))))
        start = complete_end
    ranges[-1] = (ranges[-1][0], len(text))
    offsets, k = [], 0
    for token_id in ids:
        if token_id in special:
            at = ranges[k][0] if k < len(ranges) else len(text)
            offsets.append((at, at))
        else:
            offsets.append(ranges[k])
            k += 1
    return offsets


# GRCA eq. 6: character spans -> token spans through cumulative decoded offsets
def batch_token_char_offsets(tokenizer, rows: Sequence[Sequence[int] | Tensor]) -> list[list[tuple[int, int]]]:
    """`token_char_offsets` of several responses, with the short windows of all rows decoded in one call."""
    special = _special_ids(tokenizer)
    rows = [[int(token_id) for token_id in ids] for ids in rows]
    contents = [[token_id for token_id in ids if token_id not in special] for ids in rows]
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    windowed = [i for i, (text, content) in enumerate(zip(texts, contents)) if content and _REPLACEMENT not in text]
    windows = [_windows(contents[i]) for i in windowed]
    decoded = iter(tokenizer.batch_decode([w for row in windows for w in row], skip_special_tokens=True))
    lengths = {i: _windowed_lengths([next(decoded) for _ in row]) for i, row in zip(windowed, windows)}
    result = []
    for i, (ids, content, text) in enumerate(zip(rows, contents, texts)):
        if not content:
            result.append([(0, 0)] * len(ids))
            continue
        row_lengths, pending = lengths[i] if i in lengths else _prefix_lengths(tokenizer, content)
        result.append(_offsets(ids, special, text, row_lengths, pending))
    return result


def token_char_offsets(tokenizer, response_ids: Sequence[int] | Tensor) -> list[tuple[int, int]]:
    """[start, end) of each token's characters in `tokenizer.decode(response_ids, skip_special_tokens=True)`."""
    return batch_token_char_offsets(tokenizer, [response_ids])[0]


def field_token_masks(
    offsets: Sequence[tuple[int, int]], spans: Mapping[str, Sequence[int] | None] | None, fields: Sequence[str]
) -> dict[str, Tensor]:
    """Per field, the (T,) bool mask of the tokens whose characters overlap the field's [start, end) span.

    A token overlapping two spans goes to the one it overlaps more, ties to the earlier name in `fields`, so the masks
    are disjoint (GRCA eq. 6's partition). A null span, or `spans=None` (the sample has no reward), gives all False."""
    if not fields:
        return {}
    text_length = offsets[-1][1] if offsets else 0
    bounds = []
    for name in fields:
        span = None if spans is None else spans.get(name, _MISSING)
        if span is _MISSING:
            raise ValueError(f"spans lacks the field {name!r} (has {sorted(spans)}); a field that failed is null")
        if span is None:
            bounds.append((0, 0))
            continue
        start, end = span
        if not 0 <= start <= end <= text_length:
            raise ValueError(f"{name}: span [{start}, {end}) does not fit the decoded response of {text_length} chars")
        bounds.append((start, end))
    token_bounds = torch.tensor(list(offsets), dtype=torch.long).reshape(-1, 2)
    span_bounds = torch.tensor(bounds, dtype=torch.long)
    last_start = torch.maximum(token_bounds[:, :1], span_bounds[None, :, 0])
    overlap = (torch.minimum(token_bounds[:, 1:], span_bounds[None, :, 1]) - last_start).clamp(min=0)  # (T, fields)
    largest, owner = overlap.max(dim=1)  # max returns the first index among equal values: ties go to the earlier field
    return {name: (owner == k) & (largest > 0) for k, name in enumerate(fields)}


def batch_field_masks(
    tokenizer,
    response_ids: Tensor,
    response_mask: Tensor,
    spans: Sequence[Mapping[str, Sequence[int] | None] | None],
    fields: Sequence[str],
) -> dict[str, Tensor]:
    """Per field, the (N, T) bool mask over a padded batch; row n's text is the decode of its masked tokens."""
    rows, length = response_ids.shape
    if response_mask.shape != (rows, length) or len(spans) != rows:
        raise ValueError(
            f"response_ids {tuple(response_ids.shape)}, response_mask {tuple(response_mask.shape)} and "
            f"{len(spans)} span dicts must agree on (rows, tokens)"
        )
    masks = {name: torch.zeros(rows, length, dtype=torch.bool) for name in fields}
    keep = response_mask.bool().cpu()
    ids = response_ids.cpu()
    positions = [keep[row].nonzero().squeeze(1) for row in range(rows)]
    offsets = batch_token_char_offsets(tokenizer, [ids[row, positions[row]] for row in range(rows)])
    for row in range(rows):
        try:
            row_masks = field_token_masks(offsets[row], spans[row], fields)
        except ValueError as error:
            raise ValueError(f"row {row}: {error}") from None
        for name, mask in row_masks.items():
            masks[name][row, positions[row]] = mask
    return {name: mask.to(response_ids.device) for name, mask in masks.items()}


def span_indices(field_masks: Mapping[str, Tensor], fields: Sequence[str]) -> Tensor:
    """(N, T) long: k + 1 on the tokens of `fields[k]`'s span, 0 on every other token (the background): the spans a
    sequence-level ratio is taken over (`rl.algorithms.losses.span_log_ratio`). The spans must be disjoint."""
    first = field_masks[fields[0]]
    index = torch.zeros(first.shape, dtype=torch.long)
    for k, name in enumerate(fields):
        index = torch.where(field_masks[name].bool(), k + 1, index)
    return index
