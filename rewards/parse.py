"""Parse a model's text into its well-formed fields, each with the character span of its value.

The contract: take the first `{` and the JSON object that starts there. Two readers give the same answer:
- the fast path: an output in the canonical key order (what a policy trained on our targets writes) is matched by one
  compiled regex, which yields all six spans, and decoded and type-checked by one typed msgspec call, both in C;
- the general walk: the stdlib `json` C scanner decodes one top-level value at a time, which validates the object and
  gives every value's `[start, end)` offsets and any duplicated key (a plain `json.loads` loses both).
The fast path only ever accepts texts on which the walk agrees (anything it does not fully accept falls through),
and `tests/test_rewards_agreement.py` holds both to the plain oracle `rewards.reference`.
"""

from __future__ import annotations

import json
import json.decoder
import re
from dataclasses import dataclass, field

import msgspec

from rewards.schema import FIELD_TYPES, FIELDS, ModelOutput

_JSON_WHITESPACE = " \t\n\r"
_OPENING_FENCES = ("```json", "```")
_CLOSING_FENCE = "```"


@dataclass
class ParsedOutput:
    """The well-formed fields of one text (name -> (typed value, span)); `reasons` says why each other field failed."""

    fields: dict[str, tuple[object, tuple[int, int]]] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    parsed: bool = False  # an object was found and is valid JSON
    bare: bool = False  # the text outside the object is empty or exactly a code fence


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


_scan_value = json.JSONDecoder(parse_constant=_reject_constant).scan_once
_scan_string = json.decoder.scanstring

# Possessive quantifiers (*+): these classes never need to give characters back, and not tracking that halves the cost.
_WS = r"[ \t\n\r]*+"
_STRING = r'("[^"\\]*+(?:\\.[^"\\]*+)*+")'
_FLAT_ARRAY = r'(\[[^\[\]{}"]*+\])'
_NESTED_ARRAY = r'(\[[^\[\]{}"]*+(?:\[[^\[\]{}"]*+\][^\[\]{}"]*+)*+\])'
_VALUE_PATTERNS = {"answer": _STRING, "description": _STRING, "bbox2d": _FLAT_ARRAY, "bbox3d": _FLAT_ARRAY,
                   "kpts2d": _NESTED_ARRAY, "kpts3d": _NESTED_ARRAY}
_CANONICAL = re.compile(
    r"\{" + _WS + (_WS + "," + _WS).join(f'"{name}"{_WS}:{_WS}{_VALUE_PATTERNS[name]}' for name in FIELDS) + _WS + r"\}"
)
_decode_canonical = msgspec.json.Decoder(ModelOutput).decode


def _outside_is_fence_or_empty(before: str, after: str) -> bool:
    before, after = before.strip(), after.strip()
    return (before == "" and after == "") or (before in _OPENING_FENCES and after == _CLOSING_FENCE)


def _parse_canonical(text: str, start: int) -> ParsedOutput | None:
    match = _CANONICAL.match(text, start)
    if match is None:
        return None
    try:
        output = _decode_canonical(text[start : match.end()])
    except (msgspec.MsgspecError, UnicodeEncodeError):
        return None
    fields = {name: (getattr(output, name), match.span(k + 1)) for k, name in enumerate(FIELDS)}
    return ParsedOutput(fields=fields, parsed=True, bare=_outside_is_fence_or_empty(text[:start], text[match.end() :]))


def _skip_whitespace(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _JSON_WHITESPACE:
        i += 1
    return i


def _walk_object(text: str, start: int) -> tuple[list[tuple[str, object, int, int]], int]:
    """Members (key, value, value_start, value_end) of the object opening at `start`, and the index after its `}`."""
    members = []
    i = _skip_whitespace(text, start + 1)
    if text[i] == "}":
        return members, i + 1
    while True:
        if text[i] != '"':
            raise ValueError(f"expected a key string at char {i}")
        key, i = _scan_string(text, i + 1, True)
        i = _skip_whitespace(text, i)
        if text[i] != ":":
            raise ValueError(f"expected ':' at char {i}")
        value_start = _skip_whitespace(text, i + 1)
        try:
            value, i = _scan_value(text, value_start)
        except StopIteration as stop:
            raise ValueError(f"expected a value at char {stop.value}") from None
        members.append((key, value, value_start, i))
        i = _skip_whitespace(text, i)
        if text[i] == "}":
            return members, i + 1
        if text[i] != ",":
            raise ValueError(f"expected ',' or '}}' at char {i}")
        i = _skip_whitespace(text, i + 1)


def _describe(exc: msgspec.ValidationError) -> str:
    return str(exc).replace("`$`", "the value").replace("`$", "`value")


def _parse_general(text: str, start: int) -> ParsedOutput:
    try:
        members, end = _walk_object(text, start)
    except IndexError:
        return ParsedOutput(reasons=[f"no JSON object: the object starting at char {start} is truncated"])
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text) or exc.msg.startswith("Unterminated"):
            return ParsedOutput(reasons=[f"no JSON object: the object starting at char {start} is truncated ({exc.msg})"])
        return ParsedOutput(reasons=[f"no JSON object: invalid JSON in the object starting at char {start} ({exc})"])
    except ValueError as exc:
        return ParsedOutput(reasons=[f"no JSON object: invalid JSON in the object starting at char {start} ({exc})"])
    except RecursionError:
        return ParsedOutput(reasons=[f"no JSON object: the object starting at char {start} is nested too deeply"])
    out = ParsedOutput(parsed=True, bare=_outside_is_fence_or_empty(text[:start], text[end:]))
    counts: dict[str, int] = {}
    for key, *_ in members:
        counts[key] = counts.get(key, 0) + 1
    values = {key: (value, (value_start, value_end)) for key, value, value_start, value_end in members}
    for name in FIELDS:
        if name not in values:
            out.reasons.append(f"{name}: missing")
        elif counts[name] > 1:
            out.reasons.append(f"{name}: duplicated key ({counts[name]} times)")
        else:
            value, span = values[name]
            try:
                out.fields[name] = (msgspec.convert(value, FIELD_TYPES[name]), span)
            except msgspec.ValidationError as exc:
                out.reasons.append(f"{name}: {_describe(exc)}")
    return out


def parse_output(text: str) -> ParsedOutput:
    """Parse the first JSON object of `text` into its well-formed fields (see the module docstring)."""
    start = text.find("{")
    if start < 0:
        return ParsedOutput(reasons=["no JSON object: the text has no '{'"])
    return _parse_canonical(text, start) or _parse_general(text, start)
