"""The algorithms, one file each, read top to bottom: what a step's batch needs, how rewards become token advantages
or pairs, which loss. The runtime (rl.runtime) calls them only through `Algorithm`; nothing there asks which one runs.

    grca.py   routed GRPO: each field's group-standardized reward on that field's tokens (GRCA eqs. 9-16)
    grpo.py   broadcast GRPO: GRCA with one scalar advantage per response (the only difference)
    gdpo.py   GDPO: each reward standardized in its group, then summed, batch-normalized and broadcast
    dapo.py   DAPO: broadcast GRPO with overlong shaping, clip-higher, token-mean loss and dynamic sampling
    sft.py    teacher forcing on the dataset's targets (GRCA eq. 5), with the cloud-alignment loss
    spa.py    the clean cloud against a 3D-masked one, same target (SPA eqs. 3-6)
    dpo.py    each group's best response against its worst, or a file of pairs, against a frozen reference

They share pure tensor functions (`advantages.py`, `losses.py`, `token_spans.py`), the batch they hand the learner
(`batch.py`) and what every update does (`update.py`). No Ray here.

This module stays free of torch: the config (rl/config.py) takes its choice list from `ALGORITHMS`, and an
algorithm's module is imported when `algorithm(name)` asks for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rl.algorithms.batch import BatchSource, LearnBatch
    from rl.algorithms.update import Learner
    from rl.config import Config

ALGORITHMS = (
    "grca",
    "grpo",
    "gdpo",
    "dapo",
    "spa",
    "dpo",
    "sft",
)  # each the name of its module here, which defines ALGORITHM


class Algorithm(Protocol):
    """What the runtime calls: `batch` once per step on the controller, `update` on every learner rank's shard."""

    name: str
    warm_up: bool  # without policy.init, the run first trains the SFT warm-up (GRCA Stage 1) and starts from it
    clips_ratio: bool  # a clipped ratio over the rollout's log-probs: one_step_off and old log-prob recomputation apply
    recipe: dict  # {"section.key": value} the algorithm stands for, set under the run's own files and overrides

    def rollouts(self, cfg: Config) -> bool:
        """Whether its stages sample from the policy (rollout workers and a reward client)."""

    def needs_reference(self, cfg: Config) -> bool:
        """Whether the learner keeps a frozen copy of the initial policy to compare against."""

    def heads(self, cfg: Config) -> dict:
        """The training heads its losses read, as `PointVLM.from_pretrained` overrides ({} for none)."""

    def batch(self, step: int, source: BatchSource, cfg: Config) -> tuple[LearnBatch, dict[str, float]]:
        """Step `step`'s batch for the learner and the metrics of building it."""

    def update(self, learner: Learner, batch: LearnBatch, cfg: Config) -> dict[str, float]:
        """One step's epochs over this rank's shard, through `learner.accumulator`; the loss statistics."""

    def learning_rows(self, batch: LearnBatch) -> int:
        """What in this rank's shard can teach anything (0 on every rank: the step is skipped)."""


def algorithm(name: str) -> Algorithm:
    """The algorithm called `name` (one of ALGORITHMS), a fresh instance."""
    if name not in ALGORITHMS:
        raise ValueError(f"algo.name: expected one of {', '.join(ALGORITHMS)}, got {name!r}")
    return importlib.import_module(f"rl.algorithms.{name}").ALGORITHM()
