"""Where a run's figures go: `metrics.jsonl` (one line per step, flushed), TensorBoard events, Ray metrics (the Ray
dashboard's Metrics view, through its Prometheus export) and one progress line per step on the terminal."""

from __future__ import annotations

import json
import re
from pathlib import Path

REWARD_ORDER = ("format", "answer", "bbox2d", "bbox3d", "kpts2d", "kpts3d", "rpc")
TIME_ORDER = ("rollout", "reward", "learn", "sync")


def progress_line(step: int, steps: int, metrics: dict[str, float]) -> str:
    """`step 3/20 | format 0.95 ... rpc 0.55 | loss 0.012 | rollout 4.1s reward 0.2s learn 2.3s sync 0.1s`."""
    parts = [f"step {step + 1}/{steps}"]
    rewards = " ".join(
        f"{name} {metrics[f'reward/{name}']:.3f}" for name in REWARD_ORDER if f"reward/{name}" in metrics
    )
    if rewards:
        parts.append(rewards)
    if "loss/total" in metrics:
        parts.append(f"loss {metrics['loss/total']:.4f}")
    times = " ".join(f"{name} {metrics[f'time/{name}']:.1f}s" for name in TIME_ORDER if f"time/{name}" in metrics)
    if times:
        parts.append(times)
    return " | ".join(parts)


class MetricsLog:
    """Append-only metrics of one run stage; safe to reopen on resume (lines are appended, steps continue)."""

    def __init__(self, run_dir: str | Path, run_name: str, steps: int):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.steps, self.run_name = steps, run_name
        self.jsonl = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.gauges: dict = {}

    def _gauge(self, key: str):
        from ray.util.metrics import Gauge

        if key not in self.gauges:
            name = "pointrl_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
            self.gauges[key] = Gauge(name, description=f"pointrl {key}", tag_keys=("run",))
        return self.gauges[key]

    def log(self, step: int, metrics: dict[str, float], echo: bool = True) -> None:
        self.jsonl.write(json.dumps({"step": step + 1, **metrics}) + "\n")
        self.jsonl.flush()
        for key, value in metrics.items():
            self.tensorboard.add_scalar(key, value, step + 1)
            self._gauge(key).set(value, tags={"run": self.run_name})
        self.tensorboard.flush()
        if echo:
            print(progress_line(step, self.steps, metrics), flush=True)

    def close(self) -> None:
        self.jsonl.close()
        self.tensorboard.close()
