"""How the RL loop reaches the reward service: a Ray Serve handle (default), in process, or an HTTP URL.

A call that fails or times out does not stop training: its samples come back as missing (`None`), get advantage 0 and
stay out of their group's statistics (the driver counts them in the metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

RewardFn = Callable[[list[dict], dict], list[dict | None]]


def _missing(count: int, why: str) -> list[None]:
    log.warning("reward call failed, %d samples marked missing: %s", count, why)
    return [None] * count


def local_rewards() -> RewardFn:
    from rewards import score_batch

    return lambda samples, quant: score_batch(samples, quant)


def serve_rewards(timeout_s: float, replicas: int = 1, cpus_per_replica: float = 0.25) -> RewardFn:
    """Use the cluster's running reward app, or deploy one (without an HTTP proxy port of its own)."""
    from ray import serve

    from serve.ray_app import APP_NAME, reward_application

    try:
        handle = serve.get_app_handle(APP_NAME)
    except Exception:  # noqa: BLE001 - Serve raises several kinds when the app or Serve itself is absent
        serve.start(proxy_location="Disabled")  # a handle is all training needs: no HTTP proxy to keep busy
        app = reward_application(num_cpus=cpus_per_replica, max_replicas=replicas)
        handle = serve.run(app, name=APP_NAME, route_prefix=None)

    def call(samples: list[dict], quant: dict) -> list[dict | None]:
        try:
            return handle.score.remote(samples, quant).result(timeout_s=timeout_s)
        except Exception as exc:  # noqa: BLE001 - a timeout or a dead replica both mean: these rewards are missing
            return _missing(len(samples), f"{type(exc).__name__}: {exc}")

    return call


def http_rewards(url: str, timeout_s: float, token: str | None = None) -> RewardFn:
    import httpx

    headers = {"authorization": f"Bearer {token}"} if token else {}

    def call(samples: list[dict], quant: dict) -> list[dict | None]:
        try:
            response = httpx.post(
                f"{url.rstrip('/')}/v1/rewards",
                json={"samples": samples, "quant": quant},
                headers=headers,
                timeout=timeout_s,
            )
            response.raise_for_status()
            return response.json()["results"]
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            return _missing(len(samples), f"{type(exc).__name__}: {exc}")

    return call


def make_reward_fn(
    mode: str,
    url: str | None = None,
    timeout_s: float = 30.0,
    replicas: int = 1,
    cpus_per_replica: float = 0.25,
    token: str | None = None,
) -> RewardFn:
    """The reward function for `reward.mode`: "serve" (a Ray Serve handle), "local" or "http" (needs `url`)."""
    if mode == "local":
        return local_rewards()
    if mode == "serve":
        return serve_rewards(timeout_s, replicas, cpus_per_replica)
    if mode == "http":
        if not url:
            raise ValueError("reward.mode=http needs reward.url (e.g. http://127.0.0.1:8000)")
        return http_rewards(url, timeout_s, token)
    raise ValueError(f"reward.mode: expected one of serve, local, http, got {mode!r}")
