"""The fast `score_batch` against the plain per-sample oracle `rewards.reference` on thousands of random outputs."""

import random

import pytest

from rewards import score_batch
from rewards.reference import reference_score_batch
from rewards.schema import MAX_TEXT_CHARS, too_long
from tests.reward_cases import random_sample


def _assert_same(fast: list[dict], slow: list[dict], samples: list[dict]) -> None:
    assert len(fast) == len(slow)
    for f, s, sample in zip(fast, slow, samples):
        assert f["spans"] == s["spans"], sample["text"]
        for name, value in s["rewards"].items():
            assert f["rewards"][name] == pytest.approx(value, abs=1e-9), (
                name,
                sample["text"],
                f["errors"],
                s["errors"],
            )


@pytest.mark.parametrize("bins", [1000, 64, 0])
def test_fast_scorer_matches_reference_on_random_outputs(bins):
    rng = random.Random(bins)
    samples = [random_sample(rng, bins) for _ in range(1500)]
    quant = {"bins": bins, "bounds3d": [[-1, -1, -1], [1, 1, 1]]}
    _assert_same(score_batch(samples, quant), reference_score_batch(samples, quant), samples)


def test_random_outputs_cover_every_outcome():
    """Guard the generator itself: the comparison above is only as good as the cases it sees."""
    rng = random.Random(7)
    results = score_batch([random_sample(rng, 1000) for _ in range(1500)])
    for name in ("format", "answer", "bbox2d", "bbox3d", "kpts2d", "kpts3d", "rpc"):
        values = [r["rewards"][name] for r in results]
        assert any(v == 0 for v in values) and any(v > 0 for v in values), name
    assert any(v == 1.0 for r in results for v in [r["rewards"]["format"]])
    errors = " ".join(e for r in results for e in r["errors"])
    for phrase in ("truncated", "duplicated", "whole numbers", "behind the camera", "missing", "inverted", "outside"):
        assert phrase in errors, phrase


def test_both_read_a_text_at_the_length_limit_and_neither_one_past_it():
    rng = random.Random(3)
    samples = [random_sample(rng, 1000) for _ in range(20)]
    padded = [{**s, "text": s["text"].ljust(MAX_TEXT_CHARS + extra)} for s in samples for extra in (0, 1)]
    fast, slow = score_batch(padded), reference_score_batch(padded)
    _assert_same(fast, slow, padded)
    assert all(r["errors"][0] == too_long(s["text"]) for r, s in zip(fast[1::2], padded[1::2]))
    assert any(value > 0 for r in fast[::2] for value in r["rewards"].values())  # the texts at the limit are read
