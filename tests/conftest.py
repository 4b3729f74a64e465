"""Fixtures shared by the modules that run the RL loop on a real local Ray cluster (one cluster per module), and the
`e2e` marker on the end-to-end tests."""

from __future__ import annotations

import pytest
import ray
from ray import serve

from policies.tiny import build_tiny_policy

# The end-to-end tests, marked `e2e` here so that `make test-fast` (-m "not ... and not e2e") can leave them out;
# `make test` and CI still run them. A test is e2e when it starts a Ray cluster through a fixture (conftest's
# `cluster`, and the modules' own Ray clusters, which go by the same names), or when it is in one of E2E_FILES.
RAY_CLUSTER_FIXTURES = {"cluster", "gpu_cluster"}
# Files whose tests start Ray under other names, or run training end to end without a cluster fixture:
E2E_FILES = {
    "test_first_job.py",  # `ray start --head` as the README says, then the README's `ray job submit`, on free ports
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
