"""Hostile input to the reward service: bounded counts, lone surrogates in model text, a bounded answer cache, empty
tokens."""

import json

import pytest

from rewards import RequestError, request, score_batch
from rewards.reference import reference_score_batch
from tests.test_rewards_contract import scorer  # noqa: F401 - the fixture: fast path and reference
from tests.test_rewards_request import TARGET, sample


@pytest.mark.parametrize("name", ["num_kpts2d", "num_kpts3d"])
def test_huge_keypoint_count_is_a_request_error_naming_the_field(name):
    with pytest.raises(RequestError) as info:
        score_batch([sample(target={**TARGET, name: 2**63})])
    assert str(info.value).startswith(f"samples[0].target.{name}"), str(info.value)


def test_lone_surrogate_in_text_is_scored_with_offsets_kept():
    good = '{"answer": "chair"}'
    (plain,) = score_batch([sample(text=good)])
    (odd,) = score_batch([sample(text="\ud800" + good)])  # one code point before the object: spans shift by one
    assert odd["rewards"] == plain["rewards"]
    assert odd["spans"]["answer"] == [plain["spans"]["answer"][0] + 1, plain["spans"]["answer"][1] + 1]


def test_long_answers_do_not_grow_the_normalization_cache():
    before = request._normalize_short.cache_info().currsize
    for i in range(50):
        assert request.normalize_answer(f" Chair {i} " + "x" * 10_000) == f"chair {i} " + "x" * 10_000
    assert request._normalize_short.cache_info().currsize == before
    assert request._normalize_short.cache_info().maxsize <= 16384


@pytest.mark.parametrize("argv, env", [(["--token", ""], None), ([], "")])
def test_empty_token_is_a_startup_error(monkeypatch, capsys, argv, env):
    import serve.server as server

    started = []
    monkeypatch.setattr(server, "run_uvicorn", lambda *a, **k: started.append(a))
    if env is None:
        monkeypatch.delenv(server.TOKEN_ENV, raising=False)
    else:
        monkeypatch.setenv(server.TOKEN_ENV, env)
    with pytest.raises(SystemExit) as info:
        server.main(argv)
    assert info.value.code == 2 and not started
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "token" in err and "empty" in err


HUGE = "9" * 5000  # JSON allows it; Python's int() refuses more than 4300 digits (sys.get_int_max_str_digits)


def _with_huge(name: str, value: str) -> str:
    """PREDICTION as JSON with one member's value replaced by raw JSON text (a huge number cannot go through json)."""
    from tests.test_rewards_contract import PREDICTION

    members = [f'"{key}": {value if key == name else json.dumps(v)}' for key, v in PREDICTION.items()]
    if name not in PREDICTION:
        members.append(f'"{name}": {value}')
    return "{" + ", ".join(members) + "}"


@pytest.mark.parametrize("bins", [0, 1000])
@pytest.mark.parametrize(
    "name, value",
    [
        ("bbox2d", f"[{HUGE}, 0, 10, 10]"),
        ("answer", HUGE),
        ("kpts3d", f"[[1, 1, 1], [-{HUGE}, 0, 0]]"),
        ("note", f'[{{"x": {HUGE}}}]'),
    ],
)
def test_a_huge_integer_is_a_defect_of_its_field_only(scorer, bins, name, value):  # noqa: F811 - the imported fixture
    from tests.test_rewards_contract import score

    result = score(scorer, _with_huge(name, value), quant={"bins": bins})
    for other in ("answer", "description", "bbox2d", "bbox3d", "kpts2d", "kpts3d"):
        assert (result["spans"][other] is None) == (other == name), (other, result["errors"])
    if name == "note":  # not a schema field: nothing is lost
        assert result["rewards"]["format"] == 1.0
    else:
        assert result["rewards"]["format"] == 0.0 and result["rewards"][name] == 0.0
        assert any(error.startswith(f"{name}:") for error in result["errors"]), result["errors"]
    if bins == 0:  # the other fields score as in the plain output (test_rewards_contract's hand-computed values)
        assert result["rewards"]["bbox3d"] == pytest.approx(4 / 12)
        assert result["rewards"]["kpts2d"] == pytest.approx(2 / 3)


def test_huge_integers_agree_between_the_fast_path_and_the_reference():
    from tests.test_rewards_contract import CAMERA
    from tests.test_rewards_contract import TARGET as CONTRACT_TARGET

    cases = [
        ("bbox2d", f"[{HUGE}, 0, 10, 10]"),
        ("note", HUGE),
        ("bbox3d", f"[0, 0, 0, 2, 2, -{HUGE}]"),
        ("kpts2d", f"[[{HUGE}0, 1]]"),
    ]
    texts = [_with_huge(name, value) for name, value in cases]
    samples = [{"text": t, "target": CONTRACT_TARGET, "camera": CAMERA} for t in texts]
    for quant in ({"bins": 0}, {"bins": 1000}):
        for fast, slow in zip(score_batch(samples, quant), reference_score_batch(samples, quant)):
            assert fast["spans"] == slow["spans"]
            assert fast["rewards"] == pytest.approx(slow["rewards"])


def test_deep_nesting_beside_a_lone_surrogate_is_a_request_error():
    """Found by the service fuzz test: the stdlib decoder (the surrogate path) recursed out and gave a 500."""
    from rewards.request import decode_request

    body = b'{"samples": [{"text": "\\ud800"}], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(RequestError):
        decode_request(body)


@pytest.mark.parametrize("value", ['"\\ud800"', '[1, "\\udfff"]', '{"\\ud800": 1}'])
def test_an_escaped_lone_surrogate_where_numbers_belong_is_a_field_defect(scorer, value):  # noqa: F811 - the imported fixture
    """Found by the service fuzz test: msgspec raised UnicodeEncodeError out of score_batch (a 500 over HTTP)."""
    from tests.test_rewards_contract import score

    result = score(scorer, _with_huge("bbox3d", value))
    assert result["spans"]["bbox3d"] is None and result["spans"]["bbox2d"] is not None
    assert any(error.startswith("bbox3d:") for error in result["errors"])
