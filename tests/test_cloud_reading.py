"""bench/cloud_reading.py: the teacher-forced NLL of each field's target tokens with each object's own cloud and with
another's, the measure of issue 26's question whether a policy reads its cloud, without decoding."""

from __future__ import annotations

import pytest

from bench.cloud_reading import cloud_reading, field_nll, main, summary, target_tokens
from data3d import generate_sample
from rewards import FIELDS
from rl.config import run_quant
from rl.config_loading import load_config
from tests.conftest import TINY_DATA

CFG = load_config("sft.yaml", TINY_DATA)
QUANT = run_quant(CFG)  # the bins the taught policy learned (64; Quant()'s default is another)


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(0, i, num_points=256, image_size=32, num_kpts=1) for i in range(4)]


def test_a_taught_policy_knows_its_targets_and_an_untrained_one_guesses(init_policy, taught_policy):
    """It is the NLL of the target answer's own tokens: near 0 for a policy taught these objects (TINY_DATA's two,
    generated with seed 0), near log(vocabulary) for an untrained one, in every field."""
    from policies import PointVLM
    from rl.runtime.data import TrainingSet

    taught = [TrainingSet(CFG, "train", 2, CFG.data.seed)[i] for i in range(2)]
    untrained = PointVLM.from_pretrained(init_policy)
    known = field_nll(taught_policy, target_tokens(taught_policy, taught, QUANT), taught, QUANT, use_images=False)
    guessed = field_nll(untrained, target_tokens(untrained, taught, QUANT), taught, QUANT, use_images=False)
    assert set(known) == set(guessed) == set(FIELDS)
    assert max(max(v) for v in known.values()) < 0.5
    assert min(min(v) for v in guessed.values()) > 5.0  # log(2048) = 7.6


def test_the_swapped_clouds_reach_the_policy_and_a_gap_has_its_ci(init_policy, samples):
    from policies import PointVLM

    policy = PointVLM.from_pretrained(init_policy)
    reading = cloud_reading(policy, samples, QUANT, use_images=False, batch_size=3)  # two batches, one ragged
    assert all(len(reading[f]["own"]) == len(reading[f]["swapped"]) == len(samples) for f in FIELDS)
    assert reading["bbox3d"]["own"] != reading["bbox3d"]["swapped"]  # even an untrained policy hears the cloud
    again = field_nll(policy, target_tokens(policy, samples, QUANT), samples, QUANT, use_images=False)
    assert again["bbox3d"] == pytest.approx(reading["bbox3d"]["own"], abs=1e-5)  # batching changes nothing
    for row in summary(reading).values():
        low, high = row["ci"]
        assert low <= row["gap"] <= high
        assert row["gap"] == pytest.approx(row["swapped"] - row["own"], abs=1e-6)


def test_a_path_that_is_not_a_policy_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="is not a policy directory"):
        main([str(tmp_path), "--config", "sft.yaml", "data.eval_size=2"])  # overrides on both sides of an option
