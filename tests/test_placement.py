"""Placement: the pure plan on made-up clusters, then the real thing on a two-node Ray cluster with logical GPUs
(real Ray scheduling and Ray Train workers; the actors need no CUDA): colocated pairs share a GPU, disaggregated
learners never touch a rollout GPU, and a cluster that cannot hold the plan is refused in one line."""

from __future__ import annotations

import json

import pytest
import ray

from rl.config import ConfigError
from rl.config_loading import load_config
from rl.runtime.controller import check_engine_sleep
from rl.runtime.driver import main
from rl.runtime.placement import (
    PlacementError,
    learner_scaling,
    plan_on_cluster,
    plan_placement,
    reserve_rollout_group,
    uses_rollouts,
)

GPU_ROLLOUT = ["learner.use_gpu=true", "learner.num_workers=2", "rollout.num_workers=2"]


def config(*overrides, name="grpo.yaml"):
    return load_config(name, ["learner.cpus_per_worker=0.5", "rollout.cpus_per_worker=0.25", *overrides])


def test_disaggregated_learners_take_whole_gpus_and_rollouts_their_share():
    plan = plan_placement(config(*GPU_ROLLOUT, "rollout.gpus_per_worker=0.5"), [{"CPU": 8, "GPU": 4}])
    assert not plan.colocated and plan.learner_resources == {"CPU": 0.5, "GPU": 1.0}
    assert plan.rollout_bundles == ({"CPU": 0.25, "GPU": 0.5},) * 2
    assert plan.total("GPU") == 3.0


def test_colocated_learners_take_the_rest_of_each_rollout_gpu():
    cfg = config(*GPU_ROLLOUT, "rollout.gpus_per_worker=0.75", "placement.mode=colocated")
    plan = plan_placement(cfg, [{"CPU": 2, "GPU": 1}, {"CPU": 2, "GPU": 1}])  # one pair per node
    assert plan.colocated and plan.learner_resources == {"CPU": 0.5, "GPU": 0.25} and plan.total("GPU") == 2.0
    # a stage without rollout workers (the SFT warm-up) has nothing to share with: whole GPUs
    warmup = plan_placement(
        config(*GPU_ROLLOUT, "rollout.gpus_per_worker=0.75", "placement.mode=colocated", name="sft.yaml"),
        [{"CPU": 4, "GPU": 2}],
        rollouts=False,
    )
    assert not warmup.colocated and warmup.learner_resources == {"CPU": 0.5, "GPU": 1.0} and not warmup.rollout_bundles


@pytest.mark.parametrize(
    "overrides, nodes, expected",
    [
        # 3 GPUs needed, 2 there
        (
            [*GPU_ROLLOUT, "rollout.gpus_per_worker=0.5"],
            [{"CPU": 8, "GPU": 2}],
            "placement (disaggregated): learner 2 x {GPU 1, CPU 0.5} + rollout 2 x {GPU 0.5, CPU 0.25} = 3 GPUs, 1.5 CPUs "
            "needed; the Ray cluster has 2 GPUs, 8 CPUs on 1 node (2 GPUs + 8 CPUs per node): the learner workers do not fit",
        ),
        # learner.use_gpu on a cluster without GPUs
        (
            ["learner.use_gpu=true"],
            {"CPU": 4},
            "placement (disaggregated): learner 1 x {GPU 1, CPU 0.5} + rollout 2 x {CPU 0.25} = 1 GPU, 1 CPU needed; the "
            "Ray cluster has 0 GPUs, 4 CPUs on 1 node (0 GPUs + 4 CPUs per node): the learner workers do not fit (Ray sees "
            "no GPU: start it on GPU machines, or set learner.use_gpu=false and rollout.gpus_per_worker=0)",
        ),
        # enough GPUs in all, but STRICT_PACK wants both rollout workers (0.6 each) on one node of one GPU
        (
            ["rollout.gpus_per_worker=0.6", "placement.rollout_strategy=STRICT_PACK"],
            [{"CPU": 2, "GPU": 1}] * 2,
            "the rollout workers do not fit",
        ),
        # colocated: two pairs, one GPU
        (
            [*GPU_ROLLOUT, "rollout.gpus_per_worker=0.6", "placement.mode=colocated"],
            [{"CPU": 8, "GPU": 1}],
            "the rollout workers do not fit",
        ),
        # colocated: the rollout workers fit, but the node of rollout worker 1 has no CPU left for its learner
        (
            [
                *GPU_ROLLOUT,
                "rollout.gpus_per_worker=0.6",
                "placement.mode=colocated",
                "placement.rollout_strategy=SPREAD",
            ],
            [{"CPU": 1, "GPU": 1}, {"CPU": 0.25, "GPU": 1}],
            "learner worker 1 does not fit beside rollout worker 1",
        ),
    ],
)
def test_a_plan_that_does_not_fit_is_refused_in_one_line(overrides, nodes, expected):
    with pytest.raises(PlacementError) as refused:
        plan_placement(config(*overrides), nodes)
    message = str(refused.value)
    assert expected in message and "\n" not in message


LABELLED = ["placement.rollout_label=role=rollout", "placement.learner_label=role=learner"]


def test_labelled_workers_go_only_to_nodes_with_their_label():
    nodes = [{"CPU": 8}, {"CPU": 1}, {"CPU": 1}, {"CPU": 1}]  # the big head carries no label
    labels = [{}, {"role": "learner"}, {"role": "rollout"}, {"role": "rollout"}]
    plan = plan_placement(config(*LABELLED, "rollout.num_workers=2"), nodes, labels=labels)
    assert plan.rollout_label == {"role": "rollout"} and plan.learner_label == {"role": "learner"}
    assert "rollout on nodes labelled role=rollout" in plan.describe()
    with pytest.raises(PlacementError) as refused:  # 12 x 0.25 CPU would fit the head, not the 2 rollout CPUs
        plan_placement(config(*LABELLED, "rollout.num_workers=12"), nodes, labels=labels)
    assert "the rollout workers do not fit on the 2 nodes labelled role=rollout" in str(refused.value)
    with pytest.raises(PlacementError, match="the learner workers do not fit on the 0 nodes labelled role=trainer"):
        plan_placement(config("placement.learner_label=role=trainer"), nodes, labels=labels)
    assert plan_placement(config(), nodes, labels=labels).rollout_label == {}  # no label: any node


@pytest.mark.parametrize("key", ["rollout_label", "learner_label", "reward_label"])
def test_a_label_that_is_not_key_equals_value_is_refused(key):
    with pytest.raises(ConfigError, match=f"placement.{key}"):
        config(f"placement.{key}=rollout")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["placement.mode=colocated", "rollout.gpus_per_worker=0.6"], "so it needs learner.use_gpu=true"),
        ([*GPU_ROLLOUT, "placement.mode=colocated", "rollout.gpus_per_worker=0.5"], "it must be in (0.5, 1)"),
        (
            ["learner.use_gpu=true", "placement.mode=colocated", "rollout.gpus_per_worker=0.6"],
            "rollout.num_workers: 2 with placement.mode=colocated and learner.num_workers=1",
        ),
        (["rollout.gpus_per_worker=1.5"], "must be a whole number of GPUs"),
        (["learner.strategy=fsdp2", "policy.llm_mode=lora"], "fsdp2 is built and tested for policy.llm_mode=full"),
    ],
)
def test_choices_that_cannot_run_fail_before_any_cluster(overrides, expected):
    with pytest.raises(ConfigError, match=None) as refused:
        plan_placement(config(*overrides), [{"CPU": 64, "GPU": 8}])
    assert expected in str(refused.value)


def test_colocated_vllm_needs_an_engine_that_sleeps():
    from rollout.hf_engine import HFEngine

    with pytest.raises(ConfigError, match=r"needs HFEngine.sleep\(\) and .wake_up\(\)"):
        check_engine_sleep(HFEngine)

    class Sleeper:
        def sleep(self): ...

        def wake_up(self): ...

    check_engine_sleep(Sleeper)


def test_a_dpo_stage_from_a_pairs_file_runs_no_rollout_workers():
    assert uses_rollouts(config()) and not uses_rollouts(config(name="sft.yaml"))
    assert not uses_rollouts(config("dpo.pairs_file=pairs.jsonl", name="dpo.yaml"))


ISSUE_CASE = (
    "placement (disaggregated): learner 1 x {CPU 2} + rollout 2 x {CPU 0.5} = 0 GPUs, 3 CPUs needed; the Ray cluster "
    "has 0 GPUs, 2 CPUs on 1 node (0 GPUs + 2 CPUs per node): the learner workers do not fit; to fit the cluster's "
    "2 CPUs with 0.25 CPUs left for the reward replica, set learner.cpus_per_worker=1 rollout.cpus_per_worker=0.25"
)


def test_a_plan_short_of_cpus_names_the_overrides_that_fit():
    # the demo's preset on a laptop-sized `ray start --head` (2 CPUs): the refusal a first `ray job submit` met
    with pytest.raises(PlacementError) as refused:
        plan_placement(load_config("demo.yaml"), {"CPU": 2})
    assert str(refused.value) == ISSUE_CASE


@pytest.mark.parametrize(
    "name, overrides, nodes, rollouts",
    [
        ("demo.yaml", [], {"CPU": 2}, True),
        ("demo.yaml", [], {"CPU": 1}, True),  # halved twice
        ("demo.yaml", ["reward.replicas=2"], {"CPU": 2}, True),
        ("demo.yaml", ["reward.mode=local"], {"CPU": 2}, True),  # no reward replica to leave room for
        ("grca.yaml", ["learner.num_workers=2", "learner.cpus_per_worker=4"], [{"CPU": 2}, {"CPU": 2}], True),
        ("sft.yaml", ["learner.cpus_per_worker=4"], {"CPU": 2}, False),  # no rollout workers: the learner's alone
        (
            "grca.yaml",
            [*GPU_ROLLOUT, "rollout.gpus_per_worker=0.5", "learner.cpus_per_worker=8", "rollout.cpus_per_worker=4"],
            [{"CPU": 8, "GPU": 4}],
            True,
        ),
    ],
)
def test_the_named_cpu_overrides_make_the_plan_fit_beside_the_reward_replicas(name, overrides, nodes, rollouts):
    cfg = load_config(name, overrides)
    with pytest.raises(PlacementError) as refused:
        plan_placement(cfg, nodes, rollouts)
    message = str(refused.value)
    assert "\n" not in message and "; to fit the cluster's " in message
    fix = message.split(", set ")[-1].split()
    assert {key for key, _ in (word.split("=") for word in fix)} == (
        {"learner.cpus_per_worker", "rollout.cpus_per_worker"} if rollouts else {"learner.cpus_per_worker"}
    )
    fixed = load_config(name, [*overrides, *fix])
    plan = plan_placement(fixed, nodes, rollouts)
    reward = fixed.reward.replicas * fixed.reward.cpus_per_replica if rollouts and fixed.reward.mode == "serve" else 0
    have = sum(n["CPU"] for n in ([nodes] if isinstance(nodes, dict) else nodes))
    assert plan.total("CPU") + reward <= have
    assert (f"{reward:g} CPUs left for the reward replica" in message) == (reward > 0)


@pytest.mark.parametrize(
    "overrides, nodes",
    [
        ([*GPU_ROLLOUT, "rollout.gpus_per_worker=0.5"], [{"CPU": 64, "GPU": 2}]),  # GPUs short, CPUs plenty
        (["learner.use_gpu=true"], {"CPU": 1}),  # no GPU at all: the hint is about GPUs
        (["learner.cpus_per_worker=0", "rollout.cpus_per_worker=0", "placement.rollout_strategy=STRICT_SPREAD"], {}),
    ],
)
def test_no_cpu_overrides_are_named_when_cpus_would_not_make_it_fit(overrides, nodes):
    with pytest.raises(PlacementError) as refused:
        plan_placement(config(*overrides), nodes)
    assert "to fit" not in str(refused.value)


# ---- a real two-node Ray cluster with 2 logical GPUs per node --------------------------------------------------


@pytest.fixture(scope="module")
def gpu_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2, num_gpus=2)
    ray.init(address=cluster.address, namespace="pointrl")
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from policies.tiny import build_tiny_policy

    path = tmp_path_factory.mktemp("placement") / "policy"
    build_tiny_policy(out_dir=path)
    return path


def where_learners_run(cfg, plan, group, out) -> list[dict]:
    """Each learner rank's node and GPU ids, from Ray Train workers placed by the driver's ScalingConfig."""
    from ray.train import RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    def report(config):
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        seen = {"node": ray.get_runtime_context().get_node_id(), "gpus": [str(g) for g in ray.get_gpu_ids()]}
        (config["out"] / f"rank{rank}.json").write_text(json.dumps(seen))

    # gloo: the GPUs are logical, and the CPU build of torch has no NCCL
    TorchTrainer(
        report,
        train_loop_config={"out": out},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=learner_scaling(cfg, plan, group),
        run_config=RunConfig(name="placement", storage_path=str(out)),
    ).fit()
    return [json.loads((out / f"rank{k}.json").read_text()) for k in range(cfg.learner.num_workers)]


def where_rollouts_run(cfg, group, policy_dir) -> list[dict]:
    from rollout.worker import make_rollout_workers

    workers = make_rollout_workers(
        cfg.rollout.num_workers,
        policy_dir,
        cfg.rollout.cpus_per_worker,
        gpus_per_worker=cfg.rollout.gpus_per_worker,
        placement_group=group,
        device="cpu",  # the GPUs are logical: the policy stays on the CPU, placement is what is checked
    )
    try:
        return ray.get(
            [
                w.__ray_call__.remote(
                    lambda _: {
                        "node": ray.get_runtime_context().get_node_id(),
                        "gpus": [str(g) for g in ray.get_gpu_ids()],
                    }
                )
                for w in workers
            ]
        )
    finally:
        for worker in workers:
            ray.kill(worker)


@pytest.mark.parametrize("mode", ["colocated", "disaggregated"])
def test_the_plan_places_real_workers(gpu_cluster, tiny_policy, tmp_path, mode):
    from ray.util.placement_group import remove_placement_group

    # colocated: SPREAD sends the two pairs to different nodes, so each learner must follow its rollout worker
    share = {"colocated": 0.6, "disaggregated": 0.5}[mode]
    cfg = config(
        *GPU_ROLLOUT, f"placement.mode={mode}", f"rollout.gpus_per_worker={share}", "placement.rollout_strategy=SPREAD"
    )
    plan = plan_on_cluster(cfg, uses_rollouts(cfg))
    group = reserve_rollout_group(plan)
    try:
        rollouts = where_rollouts_run(cfg, group, tiny_policy)
        learners = where_learners_run(cfg, plan, group, tmp_path)
    finally:
        remove_placement_group(group)
    assert all(len(w["gpus"]) == 1 for w in rollouts + learners)
    if mode == "colocated":
        assert rollouts[0]["node"] != rollouts[1]["node"]
        assert [(w["node"], w["gpus"]) for w in learners] == [(w["node"], w["gpus"]) for w in rollouts]
    else:
        assert not {(w["node"], w["gpus"][0]) for w in learners} & {(w["node"], w["gpus"][0]) for w in rollouts}
        assert len({(w["node"], w["gpus"][0]) for w in learners}) == 2


def test_a_run_the_cluster_cannot_hold_stops_with_one_line(gpu_cluster, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(
            "grpo.yaml",
            [
                f"run.dir={tmp_path / 'big'}",
                "learner.use_gpu=true",
                "learner.num_workers=8",
                "rollout.prompts_per_step=8",
                "sft.batch_size=8",
            ],  # they divide over the 8 ranks: the cluster refuses
        )
    # one line of ours (the cluster's own log lines may come through stderr too, an actor's prefixed "(name pid=N)",
    # even a late one of the test before)
    err = capsys.readouterr().err.splitlines()
    ours = [line for line in err if "placement" in line and "Ray Train" not in line and " pid=" not in line]
    assert stopped.value.code == 2 and len(ours) == 1
    assert ours[0].startswith("placement error: placement (disaggregated): learner 8 x {GPU 1") and "4 GPUs" in ours[0]
    assert not (tmp_path / "big").exists()  # refused before anything was built


def test_waiting_for_an_autoscaler_gives_up_after_placement_wait_s(gpu_cluster):
    import time

    from ray.autoscaler.sdk import request_resources

    cfg = config("learner.use_gpu=true", "learner.num_workers=6", "placement.wait_s=1", name="sft.yaml")
    began = time.monotonic()
    try:
        with pytest.raises(PlacementError, match="learner 6 x {GPU 1, CPU 0.5}"):
            plan_on_cluster(cfg, rollouts=False)
    finally:
        request_resources(bundles=[])  # withdraw the demand it left with the (absent) autoscaler
    assert time.monotonic() - began >= 1
