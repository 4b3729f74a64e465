"""Property tests of the reward geometry and the span parser (hypothesis)."""

import json

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import FIELDS, score_batch
from rewards.geometry import box_iou
from rewards.parse import parse_output
from rewards.schema import FIELD_TYPES

coordinate = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


def boxes(dims: int):
    return st.lists(coordinate, min_size=2 * dims, max_size=2 * dims).map(np.array)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([2, 3]).flatmap(lambda d: st.tuples(boxes(d), boxes(d))))
def test_iou_is_symmetric_and_bounded(pair):
    a, b = pair
    ab, ba = box_iou(a, b), box_iou(b, a)
    assert ab == ba
    assert 0.0 <= ab <= 1.0


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([2, 3]).flatmap(boxes))
def test_iou_of_a_box_with_itself_is_one_when_it_has_volume(box):
    d = len(box) // 2
    lo, hi = np.minimum(box[:d], box[d:]), np.maximum(box[:d], box[d:])
    proper = np.concatenate([lo, hi])
    expected = 1.0 if np.prod(hi - lo) > 0 else 0.0
    assert box_iou(proper, proper) == expected


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)
well_typed = {
    "answer": st.text(),
    "description": st.text(),
    "bbox2d": st.lists(st.integers(0, 999), min_size=4, max_size=4),
    "bbox3d": st.lists(st.floats(0, 999), min_size=6, max_size=6),
    "kpts2d": st.lists(st.lists(st.integers(0, 999), min_size=2, max_size=2), min_size=1, max_size=5),
    "kpts3d": st.lists(st.lists(st.integers(0, 999), min_size=3, max_size=3), min_size=1, max_size=5),
}
outputs = st.fixed_dictionaries({name: well_typed[name] | json_values for name in FIELDS})


@settings(max_examples=400, deadline=None)
@given(
    outputs,
    st.permutations(FIELDS),
    st.dictionaries(st.text(max_size=6), json_values, max_size=2),
    st.text(alphabet=st.characters(blacklist_characters="{"), max_size=12),
    st.text(max_size=12),
    st.sampled_from([(", ", ": "), (",", ":"), (" ,\n", " : ")]),
    st.booleans(),
)
def test_spans_slice_back_to_each_field(output, order, extra, before, after, separators, ascii_only):
    obj = {name: output[name] for name in order} | {k: v for k, v in extra.items() if k not in FIELDS}
    text = before + json.dumps(obj, separators=separators, ensure_ascii=ascii_only) + after
    parsed = parse_output(text)
    assert parsed.parsed
    for name, (value, (start, end)) in parsed.fields.items():
        assert json.loads(text[start:end]) == obj[name]
        assert text[start:end] == json.dumps(obj[name], separators=separators, ensure_ascii=ascii_only)
    for name in FIELDS:
        assert (name in parsed.fields) == (msgspec_accepts(name, obj[name])), name


def msgspec_accepts(name: str, value) -> bool:
    try:
        msgspec.convert(value, FIELD_TYPES[name])
    except msgspec.ValidationError:
        return False
    return True


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 999), min_size=4, max_size=4), st.text(max_size=8))
def test_score_batch_spans_slice_back(box, answer):
    obj = {
        "answer": answer,
        "description": "d",
        "bbox2d": box,
        "bbox3d": [0, 0, 0, 9, 9, 9],
        "kpts2d": [box[:2]],
        "kpts3d": [[1, 2, 3]],
    }
    text = json.dumps(obj, ensure_ascii=False)
    camera = {
        "K": [[50, 0, 32], [0, 50, 32], [0, 0, 1]],
        "R": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        "t": [0, 0, 4],
        "width": 64,
        "height": 64,
    }
    target = {"answer": "x", "bbox2d": [0, 0, 32, 32], "bbox3d": [-1, -1, -1, 1, 1, 1]}
    (result,) = score_batch([{"text": text, "target": target, "camera": camera}])
    for name, (start, end) in result["spans"].items():
        assert json.loads(text[start:end]) == obj[name]
