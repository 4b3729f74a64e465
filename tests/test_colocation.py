"""Colocated vLLM hands each GPU's memory over in one order (rl.runtime.controller.EngineTurns, rl.runtime.learner._publish,
rl.runtime.sharding.move_learner): the engines sleep after their rollouts, the learner takes the GPU and trains, hands it back
(parameters, AdamW's moments and the reference to host memory, the CUDA cache freed) before anything is sent, and the
engines wake before any weights load, a restored learner's rollback included. Recorded on the CPU with a fake engine
and a real learner's state; the config refuses engine settings that cannot share a GPU."""

from __future__ import annotations

import pytest
import ray
import torch

from policies.tiny import build_tiny_policy
from rl.algorithms.update import make_optimizer
from rl.config import ConfigError
from rl.config_loading import load_config
from rl.runtime.controller import EngineTurns
from rl.runtime.learner import _publish
from rl.runtime.placement import check_config, takes_turns_on_gpus
from rl.runtime.sharding import move_learner
from rollout.weight_sync import Published, WeightSync

COLOCATED = [
    "learner.use_gpu=true",
    "placement.mode=colocated",
    "rollout.gpus_per_worker=0.75",
    "rollout.num_workers=1",
    "rollout.backend=vllm",
]


def trained_learner():
    policy = build_tiny_policy(seed=0)
    cfg = load_config("grca.yaml")
    optimizer, _ = make_optimizer([p for p in policy.parameters() if p.requires_grad], cfg)
    sum(p.sum() for p in policy.parameters() if p.requires_grad).backward()
    optimizer.step()  # AdamW's moments exist
    return policy, optimizer


def test_the_learner_moves_its_parameters_moments_and_reference_off_the_device():
    policy, optimizer = trained_learner()
    reference = build_tiny_policy(seed=1)
    move_learner(policy, optimizer, reference, torch.device("meta"))
    assert {p.device.type for p in policy.parameters()} == {"meta"}
    assert {p.device.type for p in reference.parameters()} == {"meta"}
    moments = [v for state in optimizer.state.values() for k, v in state.items() if k != "step"]
    assert moments and {m.device.type for m in moments} == {"meta"}
    assert {state["step"].device.type for state in optimizer.state.values()} == {"cpu"}


def test_a_colocated_step_hands_the_gpu_over_in_order(cluster):
    log = []
    engines = EngineTurns(lambda name: log.append(f"engine {name}"), sleeps=True)
    policy, optimizer = trained_learner()

    def release():
        log.append("learner releases its GPU")
        move_learner(policy, optimizer, None, torch.device("cpu"))

    def send(published):  # the controller's publish: wake, then every worker loads
        assert isinstance(published, Published)
        engines.wake()
        log.append(f"engine loads {len(published.names)} tensors")
        return ray.put(None)

    publish = [policy, 0, 1, WeightSync(), release]
    engines.sleep()  # the controller, once its engines are up: the learner loads its policy next
    _publish(*publish, send)  # the learner's first publication (a rollback after a restart)
    engines.sleep()  # step 0: rollouts done, the batch goes to the learner
    log.append("learner takes its GPU and trains")
    _publish(*publish, send)
    engines.sleep()
    engines.sleep()  # asleep already: nothing is called twice
    engines.wake()
    loads = f"engine loads {len(policy.trainable_state_dict())} tensors"
    assert log == [
        "engine sleep",
        "learner releases its GPU",
        "engine wake_up",
        loads,
        "engine sleep",
        "learner takes its GPU and trains",
        "learner releases its GPU",
        "engine wake_up",
        loads,
        "engine sleep",
        "engine wake_up",
    ]


def test_engines_that_do_not_sleep_are_never_called():
    log = []
    engines = EngineTurns(log.append, sleeps=False)
    engines.sleep()
    engines.wake()
    assert log == []
    assert takes_turns_on_gpus(load_config("grca.yaml", COLOCATED))
    assert not takes_turns_on_gpus(load_config("grca.yaml", [*COLOCATED[:-1], "rollout.backend=hf"]))


@pytest.mark.parametrize(
    "overrides, refused",
    [
        ([*COLOCATED, "rollout.vllm.gpu_memory_utilization=0.9"], "gpu_memory_utilization: 0.9 with placement"),
        ([*COLOCATED, "rollout.vllm.tensor_parallel_size=2"], "tensor_parallel_size: 2 with placement.mode=colocated"),
        (
            ["rollout.backend=vllm", "rollout.gpus_per_worker=2", "rollout.vllm.tensor_parallel_size=1"],
            "rollout.gpus_per_worker: 2.0 with rollout.vllm.tensor_parallel_size=1",
        ),
    ],
)
def test_engine_settings_that_cannot_share_a_gpu_are_refused(overrides, refused):
    with pytest.raises(ConfigError, match=refused.replace(".", r"\.")):
        check_config(load_config("grca.yaml", overrides))
    check_config(load_config("grca.yaml", [*COLOCATED, "rollout.vllm.gpu_memory_utilization=0.7"]))
