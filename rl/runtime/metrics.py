"""Where a run's figures go: `metrics.jsonl` (one line per step, flushed), TensorBoard events (and there the periodic
evaluation's pictures), Ray metrics (the Ray dashboard's Metrics view, through its Prometheus export) and one
progress line per step on the terminal."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rewards.schema import REWARDS

TIME_ORDER = ("rollout", "reward", "learn", "sync")


def progress_line(step: int, steps: int, metrics: dict[str, float]) -> str:
    """`step 3/20 | format 0.95 ... rpc 0.55 | loss 0.012 | rollout 4.1s reward 0.2s learn 2.3s sync 0.1s`."""
    parts = [f"step {step + 1}/{steps}"]
    rewards = " ".join(f"{name} {metrics[f'reward/{name}']:.3f}" for name in REWARDS if f"reward/{name}" in metrics)
    if rewards:
        parts.append(rewards)
    if "loss/total" in metrics:
        parts.append(f"loss {metrics['loss/total']:.4f}")
    times = " ".join(f"{name} {metrics[f'time/{name}']:.1f}s" for name in TIME_ORDER if f"time/{name}" in metrics)
    if times:
        parts.append(times)
    return " | ".join(parts)


class MetricsLog:
    """The metrics of one run stage, one line per step. Reopened on resume, it continues the file; a step logged again
    (the driver resumed from, or the learner restored to, a checkpoint older than the last logged step) first drops
    that step's line and every later one, in metrics.jsonl (rewritten, then renamed over it) and in TensorBoard
    (`purge_step`), so that every reader sees each step once, as it was finally trained."""

    def __init__(self, run_dir: str | Path, run_name: str, steps: int):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.steps, self.run_name = steps, run_name
        self.path = self.run_dir / "metrics.jsonl"
        rows = _read_rows(self.path)  # a line cut short by a kill is dropped here
        self.last_step = max((r["step"] for r in rows), default=0)
        self._rewrite(rows)
        self.tensorboard = self._writer(None)
        self.gauges: dict = {}

    def _writer(self, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)

    def _rewrite(self, rows: list[dict]) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        partial.replace(self.path)
        self.jsonl = self.path.open("a", encoding="utf-8")

    def _gauge(self, key: str):
        from ray.util.metrics import Gauge

        if key not in self.gauges:
            name = "pointrl_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
            self.gauges[key] = Gauge(name, description=f"pointrl {key}", tag_keys=("run",))
        return self.gauges[key]

    def log(self, step: int, metrics: dict[str, float], echo: bool = True, images: dict | None = None) -> None:
        """The step's figures, and `images` ({tag: [H, W, 3] uint8}) to TensorBoard only, after any purge of a redone
        step so that they stay."""
        row = {"step": step + 1, **metrics}
        if row["step"] <= self.last_step:  # redone after a restore: the old lines go
            self.jsonl.close()
            self._rewrite([r for r in _read_rows(self.path) if r["step"] < row["step"]])
            self.tensorboard.close()
            self.tensorboard = self._writer(purge_step=row["step"])
        self.last_step = row["step"]
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        for key, value in metrics.items():
            self.tensorboard.add_scalar(key, value, step + 1)
            self._gauge(key).set(value, tags={"run": self.run_name})
        for tag, pixels in (images or {}).items():
            self.tensorboard.add_image(tag, pixels, step + 1, dataformats="HWC")
        self.tensorboard.flush()
        if echo:
            print(progress_line(step, self.steps, metrics), flush=True)

    def close(self) -> None:
        self.jsonl.close()
        self.tensorboard.close()


def _read_rows(path: Path) -> list[dict]:
    """The complete lines of an existing metrics.jsonl (none if there is no file)."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the last line, cut short when the process was killed while writing it
    return rows
