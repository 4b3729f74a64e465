"""A Ray cluster of several nodes on this machine (`ray.cluster_utils.Cluster`, one raylet per node), as the
rehearsal (bench/scale_bench.py) and the node-kill tests (tests/test_node_faults.py) drive it: which node runs a
process, a node killed as a machine dies, and a run on a thread of its own while the main thread kills and adds
nodes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil

ROLE = "pointrl-role"  # the node label that `placement.*_label` selects on
NODES = {"learner": "learner", "spare": "learner", "rollout-a": "rollout", "rollout-b": "rollout"}  # name: role


def nodes_running(cluster_nodes: dict, title: str) -> list[str]:
    """The names of the cluster nodes whose raylets run a process titled `title` (`ray::RolloutWorker`)."""
    raylets = {node.all_processes["raylet"][0].process.pid: name for name, node in cluster_nodes.items()}
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if " ".join(process.info["cmdline"] or []).startswith(title):
            found += [raylets[parent.pid] for parent in process.parents() if parent.pid in raylets]
    return found


def node_of(cluster_nodes: dict, title: str) -> str:
    """The name of the cluster node whose raylet runs the first worker process titled `title`."""
    found = nodes_running(cluster_nodes, title)
    if not found:
        raise RuntimeError(f"no process titled {title} runs on the cluster's worker nodes")
    return found[0]


def kill_node(cluster, cluster_nodes: dict, name: str) -> None:
    """The node's raylet and every process on it killed, as a machine that dies; it leaves `cluster_nodes`."""
    cluster.remove_node(cluster_nodes.pop(name), allow_graceful=False)


class Run(threading.Thread):
    """`run_stage` on a thread of its own, so that the main thread can add nodes (Ray's node start installs signal
    handlers, which only the main thread may); `rows()` reads the steps logged so far."""

    def __init__(self, cfg, policy_dir: Path, run_dir: Path):
        from rl.runtime.driver import run_stage

        super().__init__(daemon=True)
        self.run_dir, self.error, self.seconds = run_dir, None, 0.0
        self.stage = lambda: run_stage(cfg, policy_dir, run_dir)
        self.start()

    def run(self) -> None:
        began = time.perf_counter()
        try:
            self.stage()
        except BaseException as error:  # noqa: BLE001 - re-raised by `finish`
            self.error = error
        self.seconds = time.perf_counter() - began

    def rows(self) -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        return [json.loads(line) for line in lines if line.endswith("}")]  # not a line being written

    def wait_for_steps(self, steps: int) -> None:
        while len(self.rows()) < steps:
            if not self.is_alive():
                raise RuntimeError(f"the run ended before step {steps}: {self.error}")
            time.sleep(0.2)

    def finish(self) -> list[dict]:
        self.join()
        if self.error is not None:
            raise self.error
        return self.rows()
