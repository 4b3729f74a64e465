"""`make demo-real` (issue 26): its two presets load as a run would, and its report (bench/demo_real_report.py) scores
two policies on fresh objects, compares them object by object, checks the floors and measures the alignment tax."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bench.demo_real_report import FLOORS, difference, main
from bench.study import STUDY_METRICS
from data3d.settings import save_settings
from rl.config import data_settings, recomputes_old_logprobs
from rl.config_loading import load_config
from tests.conftest import TINY_DATA


@pytest.mark.parametrize("name", ["demo_real_sft.yaml", "demo_real.yaml"])
def test_the_presets_train_lora_over_bfloat16_with_recomputed_log_probs(name):
    cfg = load_config(name)
    assert (cfg.policy.llm_mode, cfg.policy.dtype, cfg.data.use_images) == ("lora", "bfloat16", False)
    assert cfg.rollout.max_new_tokens >= 170  # a whole answer in SmolLM2's tokens (tests/test_real_llm.py)
    if cfg.algo.name == "grca":  # the KV-cached bfloat16 decode and the learner's pass round differently
        assert recomputes_old_logprobs(cfg) and cfg.policy.init == "runs/demo-real-sft/policy"
    else:
        assert cfg.policy.init == "runs/demo-real/init_policy" and cfg.policy.train_point_encoder


def test_a_paired_difference_of_a_policy_with_itself_is_exactly_zero():
    scores = {m: list(np.random.default_rng(0).random(50)) for m in STUDY_METRICS}
    gain = difference(scores, scores)
    assert all(gain[m] == {"mean": 0.0, "ci95": [0.0, 0.0]} for m in STUDY_METRICS)


def test_the_report_compares_two_policies_on_fresh_objects(tmp_path, init_policy, taught_policy):
    cfg = load_config("sft.yaml", TINY_DATA)
    sft, grca = tmp_path / "sft", tmp_path / "grca"
    shutil.copytree(init_policy, sft)  # untrained
    taught_policy.save_pretrained(grca)
    for policy in (sft, grca):
        save_settings(policy, data_settings(cfg))
    out = tmp_path / "report"
    main(["--sft", str(sft), "--grca", str(grca), "--llm", str(sft / "llm"), "--config", "sft.yaml", "--n", "10",
          "--out", str(out), *TINY_DATA, "eval.max_new_tokens=100"])  # fmt: skip
    result = json.loads((out / "report.json").read_text())
    assert result["n"] == 8 and set(result["rows"]) == {"SFT", "GRCA"}
    assert result["rows"]["SFT"]["parse_rate"] == 0.0  # the untrained policy writes no JSON
    assert result["rows"]["GRCA"]["parse_rate"] > 0.5  # the taught one does, on objects it never saw
    parse = result["grca_minus_sft"]["parse_rate"]
    assert parse["ci95"][0] > 0 and parse["mean"] == pytest.approx(result["rows"]["GRCA"]["parse_rate"])
    assert [c["floor"].split(" ")[0] for c in result["floors"]] == [m for m, _ in FLOORS] + ["GRCA"]
    assert result["tax"]["sft"] == result["tax"]["llm"] > 1  # the same LLM before and after "SFT" here
    assert result["tax"]["grca"] != result["tax"]["sft"]
    table = (out / "report.md").read_text()
    assert "| GRCA - SFT (95% CI) |" in table and "perplexity on rl/eval/english.txt" in table


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["learner.lrr=1"], "unknown key 'learner.lrr'"),
        (["--llm", "/nowhere"], "--llm /nowhere is not a Hugging Face model folder"),
    ],
)
def test_a_bad_report_argument_is_one_line_before_any_work(tmp_path, init_policy, argv, problem, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--sft", str(init_policy), "--grca", str(init_policy), "--out", str(tmp_path / "report"), *argv])
    assert problem in str(exit_.value) and "\n" not in str(exit_.value)
    assert not (tmp_path / "report").exists()  # nothing generated
