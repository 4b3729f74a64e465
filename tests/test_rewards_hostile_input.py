"""Hostile input to the reward service: bounded counts, lone surrogates in model text, a bounded answer cache, empty
tokens."""

import pytest

from rewards import RequestError, score_batch
from rewards import request
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
