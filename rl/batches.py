"""What one learner step consumes, built from rollouts and their rewards (GRCA, GRPO, DPO) or from the dataset's
targets (SFT, SPA). Rows are prompt-major: row p * G + g is the g-th response to prompt p, so a group is contiguous
and a shard of whole prompts keeps its groups whole.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from data3d import Sample, reward_sample, target_text
from policies.point_ops import drop_points, gaussian_noise, mask_groups
from rewards import REWARDS, Quant
from rl.advantages import (
    ROUTED_FIELDS,
    advantage_stats,
    broadcast_advantages,
    other_fields_credit,
    routed_advantages,
)
from rl.config import ALIGN_CATEGORIES, ALIGN_COLOURS
from rl.losses import dpo_pairs_from_groups
from rl.token_spans import batch_field_masks
from rollout.engine import RolloutBatch, split_evenly


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
            corrupted=[self.corrupted[p] for p in prompts] if self.corrupted else None,
            pairs=[(a - first, b - first) for a, b in self.pairs if a in rows and b in rows],
        )


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


def policy_gradient_batch(
    step: int,
    rollout: RolloutBatch,
    samples: list[Sample],
    results: list[dict | None],
    tokenizer,
    algo,
    weights: dict[str, float],
) -> tuple[LearnBatch, dict[str, float]]:
    """GRCA (routed, per-field) or GRPO (broadcast) advantages for a scored rollout, plus reward, advantage and credit
    (GRCA §3.6: `credit/other_fields_var/<field>`, `rl.advantages.other_fields_credit`) metrics.
    `weights` (`rl.config.scalar_reward_weights`) make broadcast GRPO's scalar; routing weighs by `algo`'s keys."""
    p, g = len(samples), rollout.group_size
    table, valid = reward_table(results, p, g)
    mask = rollout.response_mask.bool()
    routed = algo.name == "grca"
    # broadcast needs no spans, but GRCA §3.6's measurement reads both arms on the geometric fields' tokens
    spans = [r["spans"] if r else None for r in results]
    fields = list(dict.fromkeys([*(algo.routed_fields if routed else []), *ROUTED_FIELDS]))
    field_masks = batch_field_masks(tokenizer, rollout.response_ids, rollout.response_mask, spans, fields)

    def advantage_of(rewards, masks, response_mask):
        if not routed:
            return broadcast_advantages(rewards, valid, weights, response_mask)
        return routed_advantages(
            rewards,
            valid,
            masks,
            response_mask,
            algo.rpc_weight,
            routed_fields=tuple(algo.routed_fields),
            routed_weights={f: algo.routed_field_weights[f] for f in algo.routed_fields},
        )

    advantages = advantage_of(table, field_masks, mask)
    credit = other_fields_credit(advantage_of, table, valid, advantages, field_masks)
    metrics = {
        **reward_metrics(table, valid),
        **{f"advantage/{k}": v for k, v in advantage_stats(advantages, mask).items()},
        **{f"credit/other_fields_{k}/{f}": v for f, measured in credit.items() for k, v in measured.items()},
    }
    return rollout_batch(step, rollout, samples, valid, advantages=advantages), metrics


def preference_batch(
    step: int, rollout: RolloutBatch, samples: list[Sample], results: list[dict | None], weights: dict[str, float]
) -> tuple[LearnBatch, dict[str, float]]:
    """DPO pairs from each group: the response with the highest weighted total reward (`weights`:
    `rl.config.scalar_reward_weights`) against the lowest."""
    p, g = len(samples), rollout.group_size
    table, valid = reward_table(results, p, g)
    total = sum(weights.get(name, 0.0) * values for name, values in table.items())
    pairs = dpo_pairs_from_groups(total, valid)
    batch = rollout_batch(step, rollout, samples, valid, pairs=pairs)
    return batch, {**reward_metrics(table, valid), "dpo/pairs": float(len(pairs))}


def read_pairs_file(path: str) -> list[tuple[str, str, str]]:
    """(uid, chosen, rejected) from a JSONL file of {"uid", "chosen", "rejected"}; a bad line is named."""
    import json
    from pathlib import Path

    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append((str(row["uid"]), str(row["chosen"]), str(row["rejected"])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f'{path}:{number}: expected {{"uid", "chosen", "rejected"}} ({exc})') from None
    if not pairs:
        raise ValueError(f"{path}: no preference pairs")
    return pairs


def file_pairs_batch(
    step: int, version: int, samples: list[Sample], chosen: list[str], rejected: list[str]
) -> LearnBatch:
    """DPO on given pairs: each prompt's chosen and rejected texts as a group of two (rows 2p and 2p + 1)."""
    texts = [text for pair in zip(chosen, rejected) for text in pair]
    return LearnBatch(
        step=step,
        version=version,
        samples=samples,
        group_size=2,
        response_texts=texts,
        pairs=[(2 * p, 2 * p + 1) for p in range(len(samples))],
    )


def corrupt(
    samples: list[Sample],
    kind: str,
    seed: int,
    *,
    mask_ratio: float = 0.5,
    noise_std: float = 0.01,
    drop_ratio: float = 0.5,
    num_groups: int = 32,
) -> list[Sample]:
    """Each sample with its cloud corrupted the SPA way: 3D group masking (`mask_ratio` of the points removed in
    whole groups), Gaussian noise or random point drop."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for sample in samples:
        points = torch.from_numpy(np.asarray(sample.points, dtype=np.float32))[None]
        if kind == "mask":
            corrupted = mask_groups(points, mask_ratio, min(num_groups, points.shape[1]), generator)
        elif kind == "gaussian":
            corrupted = gaussian_noise(points, noise_std, generator)
        elif kind == "drop":
            corrupted = drop_points(points, drop_ratio, generator)
        else:
            raise ValueError(f"spa.corruption: expected one of mask, gaussian, drop, got {kind!r}")
        out.append(dataclasses.replace(sample, points=corrupted[0].numpy()))
    return out


def target_batch(
    step: int, version: int, samples: list[Sample], quant=None, corrupted: list[Sample] | None = None
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


def alignment_targets(samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What each cloud decides, for `rl.losses.cloud_alignment_loss`: box (B, 6), category (B,), colour (B,).
    A sample of an unknown category or colour (a real-data loader's) is refused: the head cannot learn it."""
    for s in samples:
        if s.targets.category not in ALIGN_CATEGORIES or s.targets.attributes.get("colour") not in ALIGN_COLOURS:
            raise ValueError(
                f"sample {s.uid!r}: cloud alignment needs a category of {ALIGN_CATEGORIES} and a colour "
                f"of {ALIGN_COLOURS}; set sft.align_weight=0 for this data"
            )
    box = torch.tensor(np.stack([s.targets.bbox3d for s in samples]), dtype=torch.float32)
    category = torch.tensor([ALIGN_CATEGORIES.index(s.targets.category) for s in samples])
    colour = torch.tensor([ALIGN_COLOURS.index(s.targets.attributes["colour"]) for s in samples])
    return box, category, colour
