"""Each role's device (policies/roles.py): the GPU Ray assigned to the process, or the CPU; a process given a GPU
its torch cannot see is refused in one line. Checked by injecting devices (`meta`) and on a real Ray cluster that
declares a GPU this machine does not have, where a rollout worker and the evaluation must refuse to run on the CPU."""

from __future__ import annotations

import pytest
import ray
import torch

from policies.roles import move_to, process_device, role_device
from policies.tiny import build_tiny_policy
from rl.config_loading import load_config
from rl.runtime.driver import evaluate_policy, evaluation_resources
from rl.runtime.learner import read_saved
from rollout.worker import RolloutWorker, make_rollout_workers

NO_CUDA = "given GPU 0 by Ray, but torch sees no CUDA device"


@pytest.mark.parametrize(
    "assigned, visible, count, expected",
    [
        ([], None, 0, "cpu"),
        ([], ["0"], 8, "cpu"),  # GPUs on the node, none assigned to this process
        (["0"], ["0"], 1, "cuda:0"),  # an actor: Ray shows it its own GPU only
        ([3], ["3"], 1, "cuda:0"),
        (["5"], [str(i) for i in range(8)], 8, "cuda:5"),  # a Ray Train worker: every GPU of the node is visible
        (["2"], None, 4, "cuda:0"),
    ],
)
def test_a_role_runs_on_the_gpu_ray_assigned_to_its_process(assigned, visible, count, expected):
    assert role_device("rollout", assigned, visible, count) == torch.device(expected)


def test_a_gpu_that_torch_cannot_see_is_refused_in_one_line():
    with pytest.raises(RuntimeError, match=NO_CUDA) as error:
        role_device("learner", ["0"], ["0"], 0)
    assert "\n" not in str(error.value) and "the learner" in str(error.value)
    with pytest.raises(ValueError, match="unknown role 'critic'"):
        role_device("critic", [], None, 0)


def test_outside_ray_a_role_runs_on_the_cpu_unless_a_device_is_injected():
    assert process_device("evaluation") == torch.device("cpu")
    assert process_device("evaluation", "meta") == torch.device("meta")


def test_a_rollout_worker_puts_its_policy_and_engine_on_its_device(tmp_path):
    build_tiny_policy(out_dir=tmp_path / "policy")
    worker = RolloutWorker(str(tmp_path / "policy"), device="meta")
    assert worker.device == torch.device("meta")
    assert {p.device.type for p in worker.policy.parameters()} == {"meta"}
    assert worker.engine.policy is worker.policy


def test_a_policy_moves_without_the_meta_tensors_that_vllm_serves():
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, device="meta"))
    with pytest.raises(NotImplementedError):
        module.to("cpu")  # what a vLLM worker's policy, its decoder dropped, cannot do
    move_to(module, torch.device("cpu"))
    assert module[0].weight.device.type == "cpu" and module[1].weight.is_meta


def test_resumed_optimizer_state_loads_onto_the_ranks_device(tmp_path):
    torch.save({"state": {0: {"exp_avg": torch.ones(3)}}}, tmp_path / "optimizer.pt")
    saved = read_saved(tmp_path / "optimizer.pt", torch.device("meta"))
    assert saved["state"][0]["exp_avg"].device == torch.device("meta")


@pytest.fixture(scope="module")
def gpu_cluster():
    """A local Ray cluster that declares one GPU, which this machine's torch cannot see."""
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, namespace="pointrl-roles")
    yield
    ray.shutdown()


def test_a_rollout_worker_given_a_gpu_never_decodes_on_the_cpu_beside_it(gpu_cluster, tmp_path):
    build_tiny_policy(out_dir=tmp_path / "policy")
    with pytest.raises(Exception, match=NO_CUDA):
        make_rollout_workers(1, tmp_path / "policy", cpus_per_worker=0.5, gpus_per_worker=1.0)


def test_the_evaluation_runs_in_a_task_on_the_rollout_workers_gpu_not_in_the_driver(gpu_cluster, tmp_path):
    build_tiny_policy(out_dir=tmp_path / "policy")
    cfg = load_config("grca.yaml", ["rollout.gpus_per_worker=1", "data.eval_size=2", "eval.reliance=false"])
    assert evaluation_resources(cfg) == {"num_cpus": 1.0, "num_gpus": 1.0}
    with pytest.raises(Exception, match=NO_CUDA.replace("given", "evaluation was given")):
        evaluate_policy(cfg, tmp_path / "policy", tmp_path / "eval.json")
    # on the CPU it runs, in a task, and the driver writes the report the task returned
    cpu = load_config("grca.yaml", ["data.eval_size=2", "eval.reliance=false", "eval.max_new_tokens=8"])
    report = evaluate_policy(cpu, tmp_path / "policy", tmp_path / "eval.json")
    assert report["meta"]["samples"] == 2 and (tmp_path / "eval.json").is_file()
