"""The rollout workers of a stage as a fleet that loses members and gets them back.

A worker dies with its process (Ray restarts it in place, from the stage's initial policy) or with its node (Ray
restarts it once its placement-group bundle has a node again: at once where another node has room, when a node is
added otherwise). The fleet waits for neither beyond `rollout.answer_wait_s`: the call that failed is redone, with
the same prompts, on the workers that answered within it, and each missing worker keeps a ping under way. (The samples
are the same ones where the engine seeds each prompt by its place in the step, as vLLM does: see
`rollout.worker.launch_on_workers`; the HF engine seeds a worker's shard, so its redone samples differ.) Before every
later call the answered pings are collected: that worker gets the current version and takes part again. A worker out
of restarts is dropped; with no worker left the run stops, saying so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import ray

T = TypeVar("T")


class NoRolloutWorkers(RuntimeError):
    """Every rollout worker is gone: dead for good, or not placed again within the wait."""


class Fleet:
    """The controller's rollout workers: which take part, which are missing, and the version they must hold."""

    def __init__(self, workers: list, answer_wait_s: float):
        self.workers = workers  # every worker, in placement-bundle order
        self.answer_wait_s = answer_wait_s
        self.live: list[int] = list(range(len(workers)))  # the ones that take part in calls, by index
        self.returning: dict[int, ray.ObjectRef] = {}  # a missing worker's ping, under way
        self.unchecked: set[int] = set()  # answered again: its version must be checked before it takes part
        self.failures = 0  # calls that failed because a worker died (rollout/worker_restarts)
        self.version, self.published = 0, None  # the current version's refs, handed again to a worker that returns

    @property
    def taking_part(self) -> list:
        return [self.workers[i] for i in self.live]

    def publish(self, version: int, weights, rollback: bool = False) -> None:
        """Every live worker fetches `weights` (a Published) as `version`; one that returns later gets it then."""
        from rollout.weight_sync import relay

        self.version, self.published = version, weights
        self.run("weight sync", lambda workers: relay(workers, version, weights, rollback))

    def run(self, what: str, call: Callable[[list], T]) -> T:
        """`call(workers)` on the live workers, redone on those that still answer whenever a worker dies during it
        (or was restarted since the last sync)."""
        from ray.exceptions import RayActorError

        from rollout.worker import StaleWeights

        while True:
            try:
                self._take_back(what)
                if self.workers and not self.live:  # asked again after the last one was lost (another learner rank)
                    self._regroup(what)
                return call(self.taking_part)
            except (RayActorError, StaleWeights) as error:  # died mid-call, or restarted since the last sync
                self.failures += 1
                print(f"{what}: a rollout worker died ({type(error).__name__}); redoing it on those that answer")
                self._regroup(what)

    def _answers(self, pings: dict[int, ray.ObjectRef], ready: list, what: str) -> dict[int, str]:
        """The node id of each worker whose ping in `ready` answered, taken out of `pings`. A worker out of restarts
        leaves `pings` for good; one still restarting is asked again (its new ping in `pings`)."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError

        answered = {}
        for i in [i for i, ref in pings.items() if ref in ready]:
            try:
                answered[i] = ray.get(pings.pop(i))
            except ActorDiedError:  # out of restarts
                print(f"{what}: rollout worker {i} is gone for good (out of rollout.max_restarts)")
            except ActorUnavailableError:  # restarting: ask again
                pings[i] = self.workers[i].ping.remote()
        return answered

    def _regroup(self, what: str) -> None:
        """Live becomes the workers that answer a ping within `answer_wait_s`; the others keep their ping."""
        pending = {i: self.workers[i].ping.remote() for i in self.live}
        answered, deadline = [], time.monotonic() + self.answer_wait_s
        while pending and time.monotonic() < deadline:
            ready, _ = ray.wait(list(pending.values()), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            asked = len(pending)
            answered += self._answers(pending, ready, what)
            if ready and len(pending) == asked:  # only a restarting worker was asked again: give it a moment
                time.sleep(0.5)
        self.returning |= pending
        self.live, self.unchecked = sorted(answered), set(answered)  # only live workers are ever checked
        lost = sorted(self.returning)
        print(
            f"{what}: {len(self.live)} of {len(self.workers)} rollout workers take part"
            + (f"; waiting for {lost} to be placed again" if lost else ""),
            flush=True,
        )
        if not self.live:
            raise NoRolloutWorkers(
                f"{what}: no rollout worker answered within rollout.answer_wait_s={self.answer_wait_s:g} s "
                f"({len(self.returning)} not placed again: their nodes are gone and no node has room for them)"
            )

    def _take_back(self, what: str) -> None:
        """The missing workers whose ping has answered join again; any worker not known to hold the current version
        gets it (a restarted one holds the initial policy)."""
        from rollout.weight_sync import relay

        if self.returning:
            ready, _ = ray.wait(list(self.returning.values()), num_returns=len(self.returning), timeout=0)
            for i, node in self._answers(self.returning, ready, what).items():
                self.live, self.unchecked = sorted({*self.live, i}), self.unchecked | {i}
                print(f"{what}: rollout worker {i} is back, on node {node}; {len(self.live)} take part", flush=True)
        if self.unchecked and self.published is not None:
            checked = sorted(self.unchecked)
            versions = ray.get([self.workers[i].version.remote() for i in checked])
            stale = [self.workers[i] for i, v in zip(checked, versions, strict=True) if v != self.version]
            relay(stale, self.version, self.published, rollback=True)
        self.unchecked = set()
