"""The reward service as a Ray Serve deployment: the same FastAPI app over HTTP, plus a `score` method for handles.

Other Ray actors call `serve.get_app_handle(APP_NAME).score.remote(samples, quant).result()`; `served` tells which
replica answered and how much it has scored. Replicas take a fraction of a CPU so that the service, the rollout workers
and the learner share a 2-CPU machine.
"""

from __future__ import annotations

import threading

from ray import serve
from ray.serve.handle import DeploymentHandle

from rewards import score_batch
from serve.app import create_app
from serve.limits import ServiceLimits

APP_NAME = "rewards"


def reward_application(
    token: str | None = None,
    limits: ServiceLimits = ServiceLimits(),
    num_cpus: float = 0.25,
    min_replicas: int = 1,
    max_replicas: int = 2,
    target_ongoing_requests: float = 2.0,
    max_ongoing_requests: int = 5,  # Serve's own default
    label_selector: dict[str, str] | None = None,
):
    """A bound Serve application of the reward service, autoscaling between min and max replicas (a fixed count
    when they are equal: autoscaling's metrics would cost CPU for nothing). A replica busy with
    `max_ongoing_requests` turns the next request away, and the router tries another replica."""
    app = create_app(token, limits)
    scaling = (
        {"num_replicas": min_replicas}
        if min_replicas == max_replicas
        else {
            "autoscaling_config": {
                "min_replicas": min_replicas,
                "max_replicas": max_replicas,
                "target_ongoing_requests": target_ongoing_requests,
                "upscale_delay_s": 2.0,
                "downscale_delay_s": 30.0,
            }
        }
    )

    @serve.deployment(
        name="RewardService",
        ray_actor_options={"num_cpus": num_cpus, **({"label_selector": label_selector} if label_selector else {})},
        max_ongoing_requests=max_ongoing_requests,
        **scaling,
    )
    @serve.ingress(app)
    class RewardService:
        def __init__(self):
            self.lock, self.calls, self.samples = threading.Lock(), 0, 0  # handle calls run in a thread pool

        def score(self, samples: list[dict], quant: dict | None = None) -> list[dict]:
            with self.lock:
                self.calls, self.samples = self.calls + 1, self.samples + len(samples)
            return score_batch(samples, quant)

        def served(self) -> dict:
            """This replica's id and the `score` calls and samples it took: how a caller sees its load spread."""
            replica = serve.get_replica_context().replica_id.unique_id
            with self.lock:
                return {"replica": replica, "calls": self.calls, "samples": self.samples}

    return RewardService.bind()


def deploy_rewards(host: str = "127.0.0.1", port: int = 8000, **options) -> DeploymentHandle:
    """Start Serve's HTTP proxy on host:port (if not already started) and deploy the reward app; return its handle."""
    serve.start(http_options={"host": host, "port": port})
    return serve.run(reward_application(**options), name=APP_NAME, route_prefix="/")


def reward_handle() -> DeploymentHandle:
    """The handle of the running reward app, from any process or actor attached to the cluster."""
    return serve.get_app_handle(APP_NAME)
