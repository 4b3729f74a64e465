"""DAPO's dynamic sampling (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv
2503.14476, §3.2 and eq. 11): a group whose G samples all scored alike has advantage 0 on every token and teaches
nothing, but still dilutes the batch; such groups are dropped and more prompts drawn until the batch holds
rollout.prompts_per_step groups that teach something, at most rollout.max_refills extra draws per step (then the
step trains on what it has). For any algorithm whose `scored_batch` gives token advantages (GRCA, GRPO, GDPO, DAPO).

A draw reads its prompts and seeds from its own place in the run's prompt stream (`draw_position`), so a resumed
run draws the same. "Teaches something" is the algorithm's own verdict: any nonzero token advantage in the group
(for GRCA, any routed field or the background varying; for broadcast GRPO, the weighted sum varying).
"""

from __future__ import annotations

from data3d import Sample
from rl.algorithms.batch import BatchSource, LearnBatch, draw_position
from rl.config import Config
from rollout.engine import RolloutBatch, concat_batches

Draw = tuple[RolloutBatch, list[Sample], list[dict | None]]  # a draw's rollouts, their prompts, their rewards


def teaching_groups(algorithm, step: int, draw: Draw, tokenizer, cfg: Config) -> list[int]:
    """The prompts of a draw whose group has a nonzero token advantage under `algorithm`."""
    rollout, samples, results = draw
    batch, _ = algorithm.scored_batch(step, rollout, samples, results, tokenizer, cfg)
    return batch.advantages.ne(0).view(len(samples), -1).any(1).nonzero().flatten().tolist()


def only_groups(draw: Draw, groups: list[int]) -> Draw:
    rollout, samples, results = draw
    g = rollout.group_size
    return rollout.groups(groups), [samples[p] for p in groups], [results[p * g + k] for p in groups for k in range(g)]


def dynamic_batch(algorithm, step: int, source: BatchSource, cfg: Config) -> tuple[LearnBatch, dict[str, float]]:
    """Step `step`'s batch of teaching groups (see the module doc) and its metrics, with `sampling/draws`,
    `sampling/dropped_groups` and `sampling/groups` (fewer than prompts_per_step when the refills ran out)."""
    missing, kept, dropped, draws = cfg.rollout.prompts_per_step, [], 0, 0  # missing: teaching groups still wanted
    while draws <= cfg.rollout.max_refills and missing > 0:
        at = draw_position(cfg, step, draws)
        samples = source.prompts(at)
        rollout = source.rollout(at)
        draw = (rollout, samples, source.score(rollout, samples))
        draws += 1
        groups = teaching_groups(algorithm, step, draw, source.tokenizer, cfg)
        groups = groups[:missing]
        missing -= len(groups)
        dropped += len(samples) - len(groups)
        if groups:
            kept.append(only_groups(draw, groups))
    if not kept:  # no draw taught anything: the last one is the batch (all 0 advantages: a step without a gradient)
        kept.append(draw)
    rollout = concat_batches([k[0] for k in kept])
    samples, results = [s for k in kept for s in k[1]], [r for k in kept for r in k[2]]
    batch, metrics = algorithm.scored_batch(step, rollout, samples, results, source.tokenizer, cfg)
    return batch, {
        **metrics,
        "sampling/draws": float(draws),
        "sampling/dropped_groups": float(dropped),
        "sampling/groups": float(len(samples)),
    }
