"""A node dies under a run, on a real Ray cluster of several nodes on this machine (`ray.cluster_utils.Cluster`, one
raylet per node): the head holds the driver, the controller and (labelled head) the reward replica, one node labelled
learner holds the learner, a spare learner node waits, and two nodes labelled rollout hold a rollout worker each
(STRICT_SPREAD). A node is killed as `Cluster.remove_node` kills it (its raylet and every worker process on it) while
steps run."""

from __future__ import annotations

import pytest
import ray

from bench.local_cluster import NODES, ROLE, Run, kill_node, node_of, nodes_running
from tests.test_rl_loop import config

LABELLED = [
    f"placement.rollout_label={ROLE}=rollout",
    f"placement.learner_label={ROLE}=learner",
    "placement.rollout_strategy=STRICT_SPREAD",
    "reward.mode=local",
    "rollout.answer_wait_s=5",
]


@pytest.fixture(scope="module")
def nodes():
    from ray.cluster_utils import Cluster

    # a dead raylet is noticed in about a second (Ray's default takes half a minute)
    fast = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 300, "health_check_failure_threshold": 3}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "_system_config": fast, "labels": {ROLE: "head"}},
    )
    named = {name: cluster.add_node(num_cpus=1, labels={ROLE: role}) for name, role in NODES.items()}
    ray.init(address=cluster.address, namespace="pointrl")
    cluster.wait_for_nodes()
    yield cluster, named
    ray.shutdown()
    cluster.shutdown()


def test_a_rollout_node_dies_the_step_is_redone_on_the_survivor_and_a_new_node_gets_the_worker(
    nodes, init_policy, tmp_path
):
    cluster, named = nodes
    steps = 40  # the lost worker's restart on the new node takes a process start and a policy load: ~ 20 steps
    run = Run(config(tmp_path, "grpo", f"run.steps={steps}", *LABELLED), init_policy, tmp_path / "grpo")
    run.wait_for_steps(2)
    kill_node(cluster, named, node_of(named, "ray::RolloutWorker"))
    run.wait_for_steps(5)  # steps on one worker: no rollout node has room for the other (STRICT_SPREAD)
    named["rollout-c"] = cluster.add_node(num_cpus=1, labels={ROLE: "rollout"})
    rows = run.finish()
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # every step once
    workers = [r["rollout/workers"] for r in rows]
    # two, then one while the lost worker waited for a node, then two again: Ray placed it on the new node
    assert workers[:2] == [2.0, 2.0] and workers[3:5] == [1.0, 1.0] and workers[-1] == 2.0, workers
    assert rows[-1]["rollout/worker_restarts"] >= 1
    assert [r["rollout/version"] for r in rows] == [float(s) for s in range(steps)]  # the returning one caught up


def test_the_learners_node_dies_and_the_spare_takes_over_from_the_checkpoint(nodes, init_policy, tmp_path):
    cluster, named = nodes
    steps = 6
    # the reward replica on the head: on the spare, its CPUs would keep the restored learner from fitting there
    serve_on_head = ("reward.mode=serve", f"placement.reward_label={ROLE}=head")
    cfg = config(tmp_path, "grca", f"run.steps={steps}", *LABELLED, *serve_on_head)
    run = Run(cfg, init_policy, tmp_path / "grca")
    run.wait_for_steps(3)
    assert nodes_running(named, "ray::ServeReplica") == []  # on none of the worker nodes
    learner = node_of(named, "ray::RayTrainWorker")
    kill_node(cluster, named, learner)
    rows = run.finish()
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # the steps after step 2's checkpoint, once
    # the learner restored on the spare published version 2 to workers that held 3, and they took it
    assert [r["rollout/version"] for r in rows] == [float(s) for s in range(steps)]
    assert learner in ("learner", "spare") and len([name for name in named if NODES.get(name) == "learner"]) == 1
    # the restored learner's first step (after the newest checkpoint before the kill) reports its start from it
    assert any("time/learner_start" in row for row in rows[1:])
