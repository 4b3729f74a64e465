"""Training under faults on a real local Ray cluster: a rollout worker, a learner worker, the reward replica and the
driver are SIGKILLed mid-run, and each run ends with every step in metrics.jsonl exactly once. Plus the pieces:
the metrics log that a redone step rewrites, the policy export that a kill cannot leave half written, and the
rollback a restored learner's first publication may be."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from rl.runtime.learner import write_atomically
from rl.runtime.metrics import MetricsLog
from rollout.engine import check_version_order
from tests.test_rl_loop import SMALL, config, metrics

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


def steps_of(run_dir: Path) -> list[int]:
    return [row["step"] for row in metrics(run_dir)]


def test_a_redone_step_replaces_its_line_and_every_later_one(tmp_path):
    log = MetricsLog(tmp_path, "run", 6)
    for step in range(4):
        log.log(step, {"x": float(step)}, echo=False)
    log.log(2, {"x": 20.0}, echo=False)  # the learner came back from the checkpoint of step 2
    log.log(3, {"x": 30.0}, echo=False)
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "x"')  # a line cut short by a kill
    again = MetricsLog(tmp_path, "run", 6)  # the driver resumes
    again.log(4, {"x": 40.0}, echo=False)
    again.close()
    rows = metrics(tmp_path)
    assert [(r["step"], r["x"]) for r in rows] == [(1, 0.0), (2, 1.0), (3, 20.0), (4, 30.0), (5, 40.0)]


def test_an_export_killed_while_writing_leaves_the_previous_policy(tmp_path):
    target = tmp_path / "policy"
    write_atomically(target, lambda d: (d.mkdir(), (d / "weights").write_text("v1")))

    def dies_halfway(directory: Path) -> None:
        directory.mkdir()
        (directory / "weights").write_text("v2, half")
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, dies_halfway)
    assert (target / "weights").read_text() == "v1"
    write_atomically(target, lambda d: (d.mkdir(), (d / "weights").write_text("v2")))
    assert (target / "weights").read_text() == "v2" and sorted(p.name for p in tmp_path.iterdir()) == ["policy"]


def test_weights_move_forward_except_for_a_restored_learners_rollback():
    check_version_order(3, 5)
    with pytest.raises(ValueError, match="refusing weights of version 2: version 3 is already loaded"):
        check_version_order(3, 2)
    check_version_order(3, 2, rollback=True)


def processes(title: str) -> list[psutil.Process]:
    """The worker processes of this session's Ray cluster (its raylet is a child of this process: another cluster
    running on the machine is left alone) whose title (Ray sets `ray::<Actor class>...`) starts with `title`."""
    found, me = [], os.getpid()
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        try:
            ours = any(parent.pid == me for parent in process.parents())
        except psutil.NoSuchProcess:  # ended while we looked
            continue
        if cmdline.startswith(title) and ours:
            found.append(process)
    return found


class KillAfter(threading.Thread):
    """SIGKILLs the processes titled `title` once `run_dir/metrics.jsonl` holds `lines` lines."""

    def __init__(self, run_dir: Path, lines: int, title: str):
        super().__init__(daemon=True)
        self.run_dir, self.lines, self.title, self.killed = run_dir, lines, title, []
        self.start()

    def run(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            path = self.run_dir / "metrics.jsonl"
            if path.is_file() and len(path.read_text().splitlines()) >= self.lines:
                for process in processes(self.title)[:1]:
                    process.send_signal(signal.SIGKILL)
                    self.killed.append(process.pid)
                return
            time.sleep(0.2)


def run_killing(tmp_path: Path, init_policy: Path, algo: str, after: int, title: str, *extra: str) -> list[dict]:
    """A run of STEPS steps in which the first process titled `title` is SIGKILLed once `after` steps are logged;
    returns its metrics rows."""
    from rl.runtime.driver import run_stage

    run_dir = tmp_path / algo
    killer = KillAfter(run_dir, after, title)
    final = run_stage(config(tmp_path, algo, f"run.steps={STEPS}", *extra), init_policy, run_dir)
    killer.join()
    assert killer.killed and (final / "pointvlm.json").is_file()
    return metrics(run_dir)


def test_a_killed_rollout_worker_is_restarted_with_the_current_weights(cluster, init_policy, tmp_path):
    rows = run_killing(tmp_path, init_policy, "grpo", 2, "ray::RolloutWorker", "reward.mode=local")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) and rows[-1]["rollout/worker_restarts"] == 1.0
    assert [r["rollout/version"] for r in rows] == [float(s) for s in range(STEPS)]  # the restarted one caught up


def test_a_killed_learner_restores_its_checkpoint_and_redoes_the_steps_once(cluster, init_policy, tmp_path):
    rows = run_killing(tmp_path, init_policy, "grpo", 3, "ray::RayTrainWorker", "reward.mode=local")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # the steps after the step-2 checkpoint, once
    # the restored learner published version 2 to workers that held 3, and they took it
    assert [r["rollout/version"] for r in rows] == [float(s) for s in range(STEPS)]


def test_a_killed_reward_replica_is_replaced_and_the_run_goes_on(cluster, init_policy, tmp_path):
    rows = run_killing(tmp_path, init_policy, "grca", 2, "ray::ServeReplica", "reward.timeout_s=20")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[-1]["reward/missing"] == 0.0  # the last steps were scored by the replacement replica


def test_a_killed_driver_resumes_and_the_record_holds_each_step_once(cluster, init_policy, tmp_path):
    run_dir = tmp_path / "driver"
    command = [
        sys.executable,
        str(ROOT / "rl" / "train_grpo.py"),
        *SMALL,
        f"run.dir={run_dir}",
        f"run.steps={STEPS}",
        f"run.ray_address={cluster}",
        f"policy.init={init_policy}",
        "reward.mode=local",
        "checkpoint.resume=true",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(steps_of(run_dir) if (run_dir / "metrics.jsonl").is_file() else []) < 3:
        assert driver.poll() is None and time.monotonic() < deadline, "the driver ended before step 3"
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    # checkpoint.every=2: the newest checkpoint is step 2, so step 3 is redone
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert steps_of(run_dir) == list(range(1, STEPS + 1))
    assert json.loads((run_dir / "eval_final.json").read_text())["n"] == 2
    assert not any(p.name.endswith((".partial", ".previous")) for p in run_dir.iterdir())
