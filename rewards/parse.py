"""Parse a model's text into its well-formed fields, each with the character span of its value.

The contract: take the first `{` and the JSON object that starts there. Two readers give the same answer:
- `read_canonical`, for a batch: outputs in the canonical key order (what a policy trained on our targets writes) are
  matched by one compiled regex each, which yields all six spans, and the whole batch of objects is decoded and
  type-checked by one typed msgspec call;
- `parse_output`, for any one text: the stdlib `json` C scanner decodes one top-level value at a time, which validates
  the object and gives every value's `[start, end)` offsets and any duplicated key (`json.loads` loses both).
The canonical reader only accepts texts on which the general one agrees (the rest it leaves to `parse_output`), and
`tests/test_rewards_agreement.py` holds both to the plain oracle `rewards.reference`.
"""

from __future__ import annotations

import json
import json.decoder
import re
from dataclasses import dataclass, field

import msgspec

from rewards.schema import FIELD_TYPES, FIELDS, ModelOutput, too_long

_JSON_WHITESPACE = " \t\n\r"
_OPENING_FENCES = ("```json", "```")
_CLOSING_FENCE = "```"


@dataclass(slots=True)
class ParsedOutput:
    """The well-formed fields of one text (name -> (typed value, span)); `reasons` says why each other field failed."""

    fields: dict[str, tuple[object, tuple[int, int]]] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    parsed: bool = False  # an object was found and is valid JSON
    bare: bool = False  # the text outside the object is empty or exactly a code fence


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


class _Malformed(ValueError):
    """The object's own structure is not JSON (raised by `_walk_object`; the scanners raise JSONDecodeError)."""


def _int_or_infinity(digits: str) -> int | float:
    """JSON sets no limit on a number's length; Python's int() does (sys.get_int_max_str_digits, 4300 by default, a
    guard against quadratic conversion). An integer past it is read as the float() of its digits, +-infinity (what
    every integer of over 309 digits is as a float, and what 1e999 already decodes to), so it is a defect of the field
    that holds it (not a finite coordinate, not a string), not of the whole object."""
    try:
        return int(digits)
    except ValueError:
        return float(digits)


_scan_value = json.JSONDecoder(parse_constant=_reject_constant).scan_once
# A Python parse_int costs a call per integer (a third of the general reader's time), so it is only used to read
# again a text on which int() refused a number.
_scan_value_long_ints = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_int_or_infinity).scan_once
_scan_string = json.decoder.scanstring

# Possessive quantifiers (*+): these classes never need to give characters back, and not tracking that halves the cost.
_WS = r"[ \t\n\r]*+"
_STRING = r'("[^"\\]*+(?:\\.[^"\\]*+)*+")'
_FLAT_ARRAY = r'(\[[^\[\]{}"]*+\])'
_NESTED_ARRAY = r'(\[[^\[\]{}"]*+(?:\[[^\[\]{}"]*+\][^\[\]{}"]*+)*+\])'
_VALUE_PATTERNS = {
    "answer": _STRING,
    "description": _STRING,
    "bbox2d": _FLAT_ARRAY,
    "bbox3d": _FLAT_ARRAY,
    "kpts2d": _NESTED_ARRAY,
    "kpts3d": _NESTED_ARRAY,
}
_CANONICAL = re.compile(
    r"\{" + _WS + (_WS + "," + _WS).join(f'"{name}"{_WS}:{_WS}{_VALUE_PATTERNS[name]}' for name in FIELDS) + _WS + r"\}"
)
_decode_canonical = msgspec.json.Decoder(ModelOutput).decode
_decode_canonical_list = msgspec.json.Decoder(list[ModelOutput]).decode


def _outside_is_fence_or_empty(before: str, after: str) -> bool:
    before, after = before.strip(), after.strip()
    return (before == "" and after == "") or (before in _OPENING_FENCES and after == _CLOSING_FENCE)


@dataclass
class CanonicalBatch:
    """The texts of a batch that `read_canonical` read: their indices, typed fields, six value spans, outside check."""

    rows: list[int]
    outputs: list[ModelOutput]
    spans: list[tuple[tuple[int, int], ...]]
    bare: list[bool]


def _decode_each(objects: list[str]) -> list[ModelOutput | None]:
    """Typed decode of many objects in one call; if any fails, one by one so that only the failures are dropped."""
    try:
        return _decode_canonical_list("[" + ",".join(objects) + "]")
    except (msgspec.MsgspecError, UnicodeEncodeError):
        pass
    decoded = []
    for obj in objects:
        try:
            decoded.append(_decode_canonical(obj))
        except (msgspec.MsgspecError, UnicodeEncodeError):
            decoded.append(None)
    return decoded


def read_canonical(texts: list[str]) -> CanonicalBatch:
    """Read the canonical-order outputs of a batch; texts it does not fully accept are left out (see the docstring)."""
    starts = [-1 if too_long(text) else text.find("{") for text in texts]  # too long: parse_output's
    matches = [_CANONICAL.match(text, start) if start >= 0 else None for text, start in zip(texts, starts)]
    rows = [i for i, match in enumerate(matches) if match is not None]
    outputs = _decode_each([texts[i][starts[i] : matches[i].end()] for i in rows])
    batch = CanonicalBatch([], [], [], [])
    for i, output in zip(rows, outputs):
        if output is not None:
            text, match = texts[i], matches[i]
            batch.rows.append(i)
            batch.outputs.append(output)
            batch.spans.append(match.regs[1:])
            batch.bare.append(_outside_is_fence_or_empty(text[: starts[i]], text[match.end() :]))
    return batch


def _skip_whitespace(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _JSON_WHITESPACE:
        i += 1
    return i


def _walk_object(text: str, start: int, scan_value=_scan_value) -> tuple[list[tuple[str, object, int, int]], int]:
    """Members (key, value, value_start, value_end) of the object opening at `start`, and the index after its `}`."""
    members = []
    i = _skip_whitespace(text, start + 1)
    if text[i] == "}":
        return members, i + 1
    while True:
        if text[i] != '"':
            raise _Malformed(f"expected a key string at char {i}")
        key, i = _scan_string(text, i + 1, True)
        i = _skip_whitespace(text, i)
        if text[i] != ":":
            raise _Malformed(f"expected ':' at char {i}")
        value_start = _skip_whitespace(text, i + 1)
        try:
            value, i = scan_value(text, value_start)
        except StopIteration as stop:
            raise _Malformed(f"expected a value at char {stop.value}") from None
        members.append((key, value, value_start, i))
        i = _skip_whitespace(text, i)
        if text[i] == "}":
            return members, i + 1
        if text[i] != ",":
            raise _Malformed(f"expected ',' or '}}' at char {i}")
        i = _skip_whitespace(text, i + 1)


def _without_surrogates(value: object) -> object:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_without_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    return value


def _convert(value: object, name: str) -> object:
    """The field's typed value, or msgspec.ValidationError. A `"\\ud800"` escape in the model's JSON decodes to a lone
    surrogate, which msgspec cannot encode when it meets a string where the field wants numbers: that string is the
    defect, so it is converted again without surrogates to get the ordinary "Expected ..., got `str`" error."""
    try:
        return msgspec.convert(value, FIELD_TYPES[name])
    except UnicodeEncodeError:
        return msgspec.convert(_without_surrogates(value), FIELD_TYPES[name])


def _describe(exc: msgspec.ValidationError) -> str:
    return str(exc).replace("`$`", "the value").replace("`$", "`value")


def _walk(text: str, start: int) -> tuple[list[tuple[str, object, int, int]], int]:
    try:
        return _walk_object(text, start)
    except (json.JSONDecodeError, _Malformed):
        raise
    except ValueError:  # int() refused a number's length (or NaN/Infinity, which fails again the same way)
        return _walk_object(text, start, _scan_value_long_ints)


def _parse_general(text: str, start: int) -> ParsedOutput:
    try:
        members, end = _walk(text, start)
    except IndexError:
        return ParsedOutput(reasons=[f"no JSON object: the object starting at char {start} is truncated"])
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text) or exc.msg.startswith("Unterminated"):
            return ParsedOutput(
                reasons=[f"no JSON object: the object starting at char {start} is truncated ({exc.msg})"]
            )
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
                out.fields[name] = (_convert(value, name), span)
            except msgspec.ValidationError as exc:
                out.reasons.append(f"{name}: {_describe(exc)}")
    return out


def parse_output(text: str) -> ParsedOutput:
    """Parse the first JSON object of any `text` into its well-formed fields (see the module docstring)."""
    if why := too_long(text):
        return ParsedOutput(reasons=[why])
    start = text.find("{")
    if start < 0:
        return ParsedOutput(reasons=["no JSON object: the text has no '{'"])
    return _parse_general(text, start)
