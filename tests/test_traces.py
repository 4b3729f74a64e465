"""Traces and replay on a real run made in this process (`rl.runtime.local.traced_steps`, no Ray): the taught tiny
policy trains two GRCA steps, each traced to Parquet; pandas reads them back with what the step trained on, and
`pointrl replay` recomputes a step's rewards, token fields and advantages and finds them equal, and names what a
changed trace (standing in for changed reward or routing code) no longer matches."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from rl.cli.main import main as pointrl
from rl.runtime.replay import replay
from rl.runtime.traces import TraceRun, trace_path, traced_rows


@pytest.fixture(scope="module", params=["grca", "grpo"])
def run(traced_runs, request):
    """conftest's traced run of each algorithm: two steps, 6 samples a step rounded up to 2 whole groups of 4."""
    return traced_runs[request.param]


def test_traced_rows_are_whole_groups_within_rank_0s_shard():
    assert [traced_rows(k, 4, 16) for k in (0, 1, 4, 5, 8, 100)] == [0, 4, 4, 8, 8, 16]


def test_each_step_is_a_parquet_file_pandas_reads_with_what_was_trained_on(run):
    run_dir = run
    frame = pd.read_parquet(run_dir / "traces")
    assert sorted(frame["step"].unique()) == [1, 2] and len(frame) == 16  # 8 rows (2 groups of 4) a step
    row = frame.iloc[0]
    assert row["kind"] == "train" and row["uid"] and row["prompt"] and row["dataset"] == "generated with seed 0"
    tokens = len(row["token_ids"])
    for column in ("token_start", "token_end", "token_field", "rollout_logprobs", "learner_logprobs", "advantages"):
        assert len(row[column]) == tokens, column  # one value per response token, padding dropped
    assert row["learner_logprobs_from"] == "learner" and row["staleness"] == 0 and row["version"] == 0
    assert abs(row["rollout_logprobs"] - row["learner_logprobs"]).max() < 1e-4  # on-policy, as the learner measured
    assert row["importance_weights"] is None  # only one_step_off weighs tokens
    for field in ("bbox3d", "kpts3d"):  # each field's tokens decode to its span's characters
        start, end = row[f"span_{field}"] if row[f"span_{field}"] is not None else (0, 0)
        owned = [k for k, owner in enumerate(row["token_field"]) if owner == field]
        if owned:
            assert row["token_start"][owned[0]] <= start and row["token_end"][owned[-1]] >= end
    rewards = frame[[c for c in frame.columns if c.startswith("reward_")]]
    assert rewards.notna().all().all() and not frame["missing"].any()
    assert frame.groupby(["step", "group"])["reward_bbox3d"].nunique().max() > 1  # the groups' rewards differ


def test_replay_of_an_untouched_step_finds_no_difference_and_exits_0(run, capsys):
    run_dir = run
    assert replay(run_dir, 2) == []
    with pytest.raises(SystemExit) as exit_:
        pointrl(["replay", str(run_dir), "--step", "1"])
    assert exit_.value.code == 0 and "step 1: rewards, token spans and advantages as trained" in capsys.readouterr().out


def test_replay_names_each_difference_from_what_was_trained_on(run, tmp_path, capsys):
    run_dir = run
    path = trace_path(run_dir, "train", 2)
    original = pq.read_table(path)
    changed = original.to_pandas()
    changed.at[0, "reward_bbox3d"] += 0.5
    changed.at[1, "advantages"] = changed.at[1, "advantages"] + 1.0
    changed.at[2, "token_field"] = ["answer"] * len(changed.at[2, "token_field"])
    try:
        pq.write_table(pa_table(changed, original.schema), path)
        diffs = replay(run_dir, 2)
        with pytest.raises(SystemExit) as exit_:
            pointrl(["replay", str(run_dir), "--step", "2"])
    finally:
        pq.write_table(original, path)
    assert exit_.value.code == 1
    assert any(d.startswith("train-000002-0000 reward bbox3d: traced") for d in diffs)
    assert any(d.startswith("train-000002-0001 advantages:") for d in diffs)
    assert any(d.startswith("train-000002-0002 token fields:") for d in diffs)
    assert "\n".join(diffs) in capsys.readouterr().out


def pa_table(frame, schema):
    import pyarrow as pa

    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["replay", "{run}", "--step", "9"], "no train trace of step 9"),
        (["replay", "{missing}", "--step", "1"], "no traces/ here"),
    ],
)
def test_replay_of_what_is_not_traced_is_one_line(run, tmp_path, capsys, argv, message):
    run_dir = run
    argv = [a.format(run=run_dir, missing=tmp_path / "nothing") for a in argv]
    with pytest.raises(SystemExit) as exit_:
        pointrl(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_the_reader_lists_and_finds_samples(run):
    run_dir = run
    traces = TraceRun(run_dir)
    listing = traces.summaries()
    assert listing.num_rows == 16 and "token_ids" not in listing.column_names
    sample = traces.sample("train-000001-0003")
    assert sample["row"] == 3 and sample["group"] == 0
    with pytest.raises(KeyError, match="is not a sample id"):
        traces.sample("nonsense")
