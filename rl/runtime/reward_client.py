"""How the RL loop reaches the reward service: a Ray Serve handle (default), in process, or an HTTP URL.

A call (through Serve: one replica's chunk of it) that fails or times out does not stop training: its samples come back
as missing (`None`), get advantage 0 and stay out of their group's statistics (the driver counts them in the metrics).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from rollout.engine import split_evenly

log = logging.getLogger(__name__)

RewardFn = Callable[[list[dict], dict], list[dict | None]]


def _missing(count: int, why: str) -> list[None]:
    log.warning("reward call failed, %d samples marked missing: %s", count, why)
    return [None] * count


def local_rewards() -> RewardFn:
    from rewards import score_batch

    return lambda samples, quant: score_batch(samples, quant)


def serve_rewards(
    timeout_s: float, replicas: int = 1, cpus_per_replica: float = 0.25, label: dict[str, str] | None = None
) -> RewardFn:
    """Use the cluster's running reward app, or deploy one of `replicas` replicas (without an HTTP proxy port of its
    own) on nodes with the Ray `label`, if one is given. A call sends one contiguous chunk of its samples per replica,
    all at once, so the replicas score in parallel; a chunk that fails or runs past the call's `timeout_s` leaves only
    its own samples missing."""
    from ray import serve

    from serve.ray_app import APP_NAME, reward_application

    try:
        handle = serve.get_app_handle(APP_NAME)
    except Exception:  # noqa: BLE001 - Serve raises several kinds when the app or Serve itself is absent
        serve.start(proxy_location="Disabled")  # a handle is all training needs: no HTTP proxy to keep busy
        # A fixed count: a step's chunks alone would never push autoscaling past one replica. One request at a time
        # per replica: the router's power of two choices may pick the same idle replica for two chunks sent at once,
        # but a busy replica turns the second away to an idle one (and scoring, GIL-bound, gains nothing from two).
        app = reward_application(
            num_cpus=cpus_per_replica,
            min_replicas=replicas,
            max_replicas=replicas,
            max_ongoing_requests=1,
            label_selector=label,
        )
        handle = serve.run(app, name=APP_NAME, route_prefix=None)

    def call(samples: list[dict], quant: dict) -> list[dict | None]:
        deadline = time.monotonic() + timeout_s
        chunks = [chunk for chunk in split_evenly(samples, replicas) if chunk]
        # every chunk is in flight before any is awaited: the router sends each to the least busy replica
        responses = [handle.score.remote(chunk, quant) for chunk in chunks]
        results: list[dict | None] = []
        for chunk, response in zip(chunks, responses):
            results += _received(response, len(chunk), deadline)
        return results

    return call


def _received(response, count: int, deadline: float) -> list[dict | None]:
    """A chunk's results, or `count` missing ones when it failed or is not back by `deadline` (time.monotonic)."""
    try:
        return response.result(timeout_s=max(0.0, deadline - time.monotonic()))
    except Exception as exc:  # noqa: BLE001 - a timeout or a dead replica both mean: these rewards are missing
        return _missing(count, f"{type(exc).__name__}: {exc}")


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
    label: dict[str, str] | None = None,
) -> RewardFn:
    """The reward function for `reward.mode`: "serve" (a Ray Serve handle; `label`: the Ray node label its replicas
    need), "local" or "http" (needs `url`)."""
    if mode == "local":
        return local_rewards()
    if mode == "serve":
        return serve_rewards(timeout_s, replicas, cpus_per_replica, label)
    if mode == "http":
        if not url:
            raise ValueError("reward.mode=http needs reward.url (e.g. http://127.0.0.1:8000)")
        return http_rewards(url, timeout_s, token)
    raise ValueError(f"reward.mode: expected one of serve, local, http, got {mode!r}")
