"""Fixtures shared by the modules that run the RL loop on a real local Ray cluster (one cluster per module), and the
`e2e` marker on the end-to-end tests."""

from __future__ import annotations

import os

import pytest
import ray
from ray import serve

from policies.tiny import build_tiny_policy

# Ray Train's controller looks at its workers every 2 s, so each of the suite's ~60 runs of seconds waited up to 2 s
# more to end; 0.2 s cuts that to a fraction (the clusters, heads and drivers the tests start inherit it). A run of
# minutes does not notice the interval either way.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

# The end-to-end tests, marked `e2e` here so that `make test-fast` (-m "not ... and not e2e") can leave them out;
# `make test` and CI still run them. A test is e2e when it starts a Ray cluster through a fixture (conftest's
# `cluster`, and the modules' own Ray clusters, which go by the same names), or when it is in one of E2E_FILES.
RAY_CLUSTER_FIXTURES = {"cluster", "gpu_cluster"}
# Files whose tests start Ray under other names, or run training end to end without a cluster fixture:
E2E_FILES = {
    "test_first_job.py",  # `ray start --head` as the README says, then the README's `ray job submit`, on free ports
    "test_node_faults.py",  # a Cluster of five nodes, two of which die under runs
    "test_faults.py",  # SIGKILLs rollout and learner workers, the reward replica and the driver of real runs
    "test_rl_loop.py",  # the RL loop end to end: every algorithm, checkpoints and resume, on the suite's cluster
    "test_gpu_training.py",  # infra/gpu_training.py --cpu: rl.runtime.driver.main on its own local Ray, in a subprocess
    "test_reward_client.py",  # ray.init and a Serve deployment inside the test
    "test_serve_ray.py",  # its `deployment` fixture starts Ray and Serve
    "test_weight_sync.py",  # its `setup` fixture starts Ray, a Controller and rollout workers
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in E2E_FILES or RAY_CLUSTER_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 4 logical CPUs for the module; yields its GCS address (for a driver subprocess)."""
    ray.init(num_cpus=4, include_dashboard=False, namespace="pointrl")
    yield ray.get_runtime_context().gcs_address
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def init_policy(tmp_path_factory):
    """The untrained tiny policy, saved."""
    path = tmp_path_factory.mktemp("init") / "policy"
    build_tiny_policy(out_dir=path)
    return path


# one process, two training objects with one keypoint each, no images: a GRCA step in seconds (tests/test_grca_step.py)
TINY_DATA = [
    "data.train_size=2",
    "data.num_points=256",
    "data.image_size=32",
    "data.num_kpts=1",
    "data.use_images=false",
]
TINY_BATCH = ["rollout.prompts_per_step=2", "learner.micro_batch_size=8", "learner.warmup_steps=0"]


def teach_tiny_policy():
    """The tiny policy after SFT on its two training objects (TINY_DATA): at temperature 1 its samples are partly
    right, so the rewards vary within each group (measured: loss 0.017 after 100 steps; half the tokens get a nonzero
    advantage)."""
    from rl.algorithms import algorithm
    from rl.algorithms.update import learn_step, make_learner
    from rl.config_loading import load_config
    from rl.runtime.local import InProcessSource

    cfg = load_config("sft.yaml", [*TINY_DATA, *TINY_BATCH, "sft.align_weight=0", "learner.lr=3e-3", "run.steps=100"])
    policy, sft = build_tiny_policy(seed=0), algorithm("sft")
    learner, source = make_learner(policy, cfg), InProcessSource(cfg, policy)
    for k in range(cfg.run.steps):
        batch, _ = sft.batch(k, source, cfg)
        learn_step(learner, sft, batch, cfg)
    return policy


@pytest.fixture(scope="module")
def taught_policy():
    return teach_tiny_policy()


@pytest.fixture(scope="session")
def traced_runs(tmp_path_factory) -> dict:
    """Two runs made in process from the same taught policy, each two steps traced (8 samples a step: 2 groups of
    4), the learner recomputing the old log-probs: GRCA and broadcast GRPO, by name -> run directory."""
    import copy

    from rl.config_loading import load_config
    from rl.runtime.local import traced_steps

    taught, runs = teach_tiny_policy(), {}
    sampling = ["rollout.group_size=4", "rollout.max_new_tokens=100", "learner.lr=1e-4"]
    for name in ("grca", "grpo"):
        run_dir = tmp_path_factory.mktemp("traced") / name
        overrides = [
            *TINY_DATA,
            *TINY_BATCH,
            *sampling,
            "trace.samples_per_step=6",
            "learner.recompute_old_logprobs=true",
        ]
        traced_steps(load_config(f"{name}.yaml", overrides), copy.deepcopy(taught), run_dir, range(2))
        runs[name] = run_dir
    return runs
