"""Fixtures shared by the modules that run the RL loop on a real local Ray cluster (one cluster per module)."""

from __future__ import annotations

import pytest
import ray
from ray import serve

from policies.tiny import build_tiny_policy


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
