"""A real (short) Ray run writes its traces: the controller traces each step's first whole groups with learner rank
0's recomputed log-probs, and every answer of the periodic evaluation; `pointrl replay` agrees with what it trained
on."""

from __future__ import annotations

import pandas as pd

from rl.config_loading import load_config
from rl.runtime.driver import run_stage
from rl.runtime.replay import replay
from tests.test_rl_loop import SMALL


def test_a_ray_run_traces_its_steps_and_its_evaluation(cluster, init_policy, tmp_path):
    cfg = load_config(
        "grca.yaml",
        [*SMALL, f"run.dir={tmp_path / 'run'}", "run.steps=2", "eval.every=2", "rollout.max_new_tokens=48",
         "eval.max_new_tokens=48", "trace.samples_per_step=4", "learner.recompute_old_logprobs=true"],
    )  # fmt: skip
    run_stage(cfg, init_policy, tmp_path / "run")
    traces = pd.read_parquet(tmp_path / "run" / "traces")
    train, evaluation = traces[traces["kind"] == "train"], traces[traces["kind"] == "eval"]
    assert sorted(train["step"].unique()) == [1, 2] and len(train) == 8  # one whole group of 4 a step
    assert (train["learner_logprobs_from"] == "learner").all()  # rank 0's recomputation came back with its stats
    assert train["version"].tolist() == [0] * 4 + [1] * 4 and (train["staleness"] == 0).all()
    assert all(len(a) == len(t) for a, t in zip(train["advantages"], train["token_ids"]))
    assert evaluation["step"].unique().tolist() == [2] and len(evaluation) == cfg.data.eval_size
    assert evaluation["advantages"].isna().all()
    assert replay(tmp_path / "run", 2) == []
