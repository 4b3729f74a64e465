"""What a run cannot do is refused by `rl.runtime.driver.main` in one line, before Ray starts or the SFT warm-up runs
(issue: a missing policy.init failed after 47 s inside Ray, an odd prompts_per_step after the whole warm-up)."""

from __future__ import annotations

import pytest
import ray

from rl.runtime.driver import main


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["policy.init=/nonexistent/policy"], "policy.init: /nonexistent/policy is not a policy directory"),
        (["learner.num_workers=2", "rollout.prompts_per_step=3"], "rollout.prompts_per_step=3 must divide evenly"),
        (["learner.num_workers=2", "rollout.prompts_per_step=4", "sft.batch_size=5"], "sft.batch_size=5 must divide"),
        (["rollout.mode=one_step_off"], "rollout.max_staleness: one_step_off trains on rollouts one version old"),
        (["rollout.mode=one_step_off", "rollout.max_staleness=1", "algo.name=dpo"], "one_step_off is for grca and"),
    ],
)
def test_a_run_that_cannot_work_exits_2_with_one_line_before_ray_starts(tmp_path, capsys, overrides, says):
    assert not ray.is_initialized()
    with pytest.raises(SystemExit) as exit_info:
        main("grca.yaml", [f"run.dir={tmp_path / 'run'}", *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: ") and says in err and "\n" not in err
    assert not ray.is_initialized() and not (tmp_path / "run").exists()


def test_a_policy_directory_is_accepted_and_the_warm_up_batch_is_not_checked_without_a_warm_up(tmp_path):
    from policies.tiny import build_tiny_policy
    from rl.config_loading import parse_cli
    from rl.runtime.driver import check_run

    build_tiny_policy(out_dir=tmp_path / "policy")
    check_run(
        parse_cli([f"policy.init={tmp_path / 'policy'}", "learner.num_workers=2", "sft.batch_size=5"], "grca.yaml")
    )
