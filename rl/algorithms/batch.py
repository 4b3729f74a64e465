"""What one learner step consumes (`LearnBatch`), and where an algorithm gets it from (`BatchSource`: the step's
prompts, their rollouts, their rewards). Built from rollouts and their rewards (GRCA, GRPO, DPO) or from the
dataset's targets (SFT, SPA). Rows are prompt-major: row p * G + g is the g-th response to prompt p, so a group is
contiguous and a shard of whole prompts keeps its groups whole.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import torch

from data3d import Sample, reward_sample, target_text
from rewards import REWARDS, Quant
from rl.config import Config
from rollout.engine import RolloutBatch, SamplingConfig, split_evenly


@dataclass
class LearnBatch:
    """P prompts and N = P * G responses; the optional tensors are the ones the algorithm needs."""

    step: int
    version: int  # the policy version that produced the responses (for dataset targets: the learner's current one)
    samples: list[Sample]  # P
    group_size: int  # G (1 for dataset targets)
    response_ids: torch.Tensor | None = None  # (N, T); None for dataset targets, which the learner tokenizes
    response_mask: torch.Tensor | None = None  # (N, T)
    response_texts: list[str] = field(default_factory=list)  # N
    advantages: torch.Tensor | None = None  # (N, T) GRCA / GRPO
    valid: torch.Tensor | None = None  # (N,) bool: the rows whose reward came back (None for given texts)
    rollout_logprobs: torch.Tensor | None = None  # (N, T) what the rollout engine reported, for the on-policy check
    ratio_spans: torch.Tensor | None = None  # (N, T) long: each token's span for algo.ratio=sequence (None: one)
    learner_logprobs: torch.Tensor | None = None  # (N, T) their recomputation, by an update that makes one
    scores: list[dict | None] = field(default_factory=list)  # N reward results (rewards, spans): what traces record
    corrupted: list[Sample] | None = None  # SPA: each sample with its cloud corrupted (x')
    pairs: list[tuple[int, int]] = field(default_factory=list)  # DPO: (chosen row, rejected row)

    def shard(self, rank: int, world: int) -> LearnBatch:
        """This rank's whole prompts (and their rows, pairs and corrupted clouds)."""
        prompts = split_evenly(list(range(len(self.samples))), world)[rank]
        g = self.group_size
        rows = [p * g + k for p in prompts for k in range(g)]
        first = prompts[0] * g if prompts else 0

        def take(t):
            return t[rows] if t is not None else None

        return dataclasses.replace(
            self,
            samples=[self.samples[p] for p in prompts],
            response_ids=take(self.response_ids),
            response_mask=take(self.response_mask),
            response_texts=[self.response_texts[r] for r in rows] if self.response_texts else [],
            advantages=take(self.advantages),
            valid=take(self.valid),
            rollout_logprobs=take(self.rollout_logprobs),
            ratio_spans=take(self.ratio_spans),
            learner_logprobs=take(self.learner_logprobs),
            corrupted=[self.corrupted[p] for p in prompts] if self.corrupted else None,
            scores=[],  # the controller's record (traces); no learner rank reads them
            pairs=[(a - first, b - first) for a, b in self.pairs if a in rows and b in rows],
        )


class BatchSource(Protocol):
    """What an algorithm builds a step's batch from: the run's controller (rl.runtime.controller, over Ray's rollout
    workers and reward service) or one process (rl.runtime.local)."""

    version: int  # the policy version the rollout workers hold
    quant: Quant  # the run's coordinate quantization
    tokenizer: object  # the policy's tokenizer (character spans -> token spans)

    def prompts(self, step: int) -> list[Sample]:
        """Step `step`'s prompts (rollout.prompts_per_step of them, in the run's seeded order)."""

    def sample(self, uid: str) -> Sample:
        """The training sample `uid` (DPO's pairs file names its prompts)."""

    def rollout(self, step: int) -> RolloutBatch:
        """G sampled responses to each of step `step`'s prompts, with their policy version and log-probs."""

    def score(self, rollout: RolloutBatch, samples: list[Sample]) -> list[dict | None]:
        """The reward service's result of each response (None: missing), with its per-field rewards and spans."""


def rollout_sampling(cfg: Config, step: int) -> SamplingConfig:
    """How step `step` samples: G responses per prompt at the run's temperature, seeded per run and step."""
    return SamplingConfig(
        n=cfg.rollout.group_size,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        max_new_tokens=cfg.rollout.max_new_tokens,
        min_new_tokens=cfg.rollout.min_new_tokens,
        # one stream per sampled output of the run: prompt p of step k draws from
        # seed + (k * prompts + p) * G onwards (rollout.worker.launch_on_workers)
        seed=cfg.run.seed * 100_003 + step * cfg.rollout.prompts_per_step * cfg.rollout.group_size,
    )


def draw_position(cfg: Config, step: int, draw: int) -> int:
    """Where in the run's prompt stream draw `draw` of step `step` reads its prompts and seeds its sampling: draw 0
    is the step itself; dynamic sampling's refills read past the run's steps, so that they repeat no step's prompts
    in that order nor any seed."""
    return step if draw == 0 else cfg.run.steps + step * cfg.rollout.max_refills + draw - 1


def reward_table(
    results: list[dict | None], num_prompts: int, group_size: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Reward service results (None = missing) -> per-reward (P, G) tensors and the (P, G) mask of present ones."""
    valid = torch.tensor([r is not None for r in results]).view(num_prompts, group_size)
    table = {
        name: torch.tensor([r["rewards"][name] if r else 0.0 for r in results], dtype=torch.float32).view(
            num_prompts, group_size
        )
        for name in REWARDS
    }
    return table, valid


def reward_metrics(table: dict[str, torch.Tensor], valid: torch.Tensor) -> dict[str, float]:
    """Mean of each reward over the present samples, and how many were missing."""
    present = valid.sum().clamp(min=1)
    metrics = {f"reward/{name}": float((values * valid).sum() / present) for name, values in table.items()}
    metrics["reward/missing"] = float((~valid).sum())
    return metrics


def score_rollouts(rollout: RolloutBatch, samples: list[Sample], reward_fn, quant: Quant) -> list[dict | None]:
    """Send every response with its prompt's targets and camera to the reward service."""
    g = rollout.group_size
    requests = [reward_sample(samples[row // g], text) for row, text in enumerate(rollout.texts)]
    return reward_fn(requests, {"bins": quant.bins, "bounds3d": [list(b) for b in quant.bounds3d]})


def rollout_batch(
    step: int, rollout: RolloutBatch, samples: list[Sample], valid: torch.Tensor, **learned
) -> LearnBatch:
    """A scored rollout as a LearnBatch; `learned` holds what the algorithm learns from (advantages or pairs)."""
    return LearnBatch(
        step=step,
        version=rollout.version,
        samples=samples,
        group_size=rollout.group_size,
        response_ids=rollout.response_ids,
        response_mask=rollout.response_mask,
        response_texts=rollout.texts,
        valid=valid.reshape(-1),
        rollout_logprobs=rollout.logprobs,
        **learned,
    )


def target_batch(
    step: int, version: int, samples: list[Sample], quant: Quant | None = None, corrupted: list[Sample] | None = None
) -> LearnBatch:
    """Teacher forcing on the dataset's serialized targets (SFT; SPA adds the corrupted clouds)."""
    return LearnBatch(
        step=step,
        version=version,
        samples=samples,
        group_size=1,
        response_texts=[target_text(s, quant) for s in samples],
        corrupted=corrupted,
    )
