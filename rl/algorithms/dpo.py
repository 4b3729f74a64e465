"""DPO against a frozen reference: each group's best response (the highest weighted total reward) is preferred to
its worst, or the pairs come from a file (`dpo.pairs_file`, no sampling then).

"Direct Preference Optimization: Your Language Model is Secretly a Reward Model" (Rafailov et al.), in the SPA
paper's eq. 2 form: -log sigma(beta log [pi(y+) ref(y-)] / [ref(y+) pi(y-)]) over sequence log-probs.
"""

from __future__ import annotations

import json
from pathlib import Path

from data3d import Sample
from rl.algorithms.batch import BatchSource, LearnBatch, reward_metrics, reward_table, rollout_batch
from rl.algorithms.losses import dpo_loss, dpo_pairs_from_groups, masked_sample_sum
from rl.algorithms.update import Learner, answered_prompts, loss_means, on_device, rank_share, sequence_logprobs
from rl.config import Config, run_quant, scalar_reward_weights
from rollout.batching import policy_inputs
from rollout.engine import RolloutBatch


class DPO:
    name = "dpo"
    warm_up = True
    clips_ratio = False
    recipe: dict = {}

    def __init__(self):
        self.pairs: list[tuple[str, str, str]] | None = None  # dpo.pairs_file's, read on the first step

    def rollouts(self, cfg: Config) -> bool:
        return not cfg.dpo.pairs_file

    def needs_reference(self, cfg: Config) -> bool:
        return True

    def heads(self, cfg: Config) -> dict:
        return {}

    def batch(self, step: int, source: BatchSource, cfg: Config) -> tuple[LearnBatch, dict[str, float]]:
        if cfg.dpo.pairs_file:
            self.pairs = self.pairs or read_pairs_file(cfg.dpo.pairs_file)
            count = cfg.rollout.prompts_per_step
            chosen = [self.pairs[(step * count + j) % len(self.pairs)] for j in range(count)]
            samples = [source.sample(uid) for uid, _, _ in chosen]
            return file_pairs_batch(
                step, source.version, samples, [c for _, c, _ in chosen], [r for *_, r in chosen]
            ), {}
        samples = source.prompts(step)
        rollout = source.rollout(step)
        results = source.score(rollout, samples)
        return preference_batch(step, rollout, samples, results, scalar_reward_weights(cfg))

    # SPA paper eq. 2, all of this rank's pairs in one forward (so every rank runs one backward)
    def update(self, learner: Learner, batch: LearnBatch, cfg: Config) -> dict[str, float]:
        policy = learner.policy
        prompts = policy_inputs(policy, batch.samples, run_quant(cfg), cfg.data.use_images)
        all_ids, all_mask = (
            (batch.response_ids, batch.response_mask)
            if batch.response_ids is not None
            else policy.tokenize_responses(batch.response_texts)
        )
        chosen, rejected = [a for a, _ in batch.pairs], [b for _, b in batch.pairs]
        rows = chosen + rejected or [0]
        ids, mask = on_device(policy.device, all_ids[rows], all_mask[rows])
        owners = [row // batch.group_size for row in rows]
        ref = sequence_logprobs(
            learner.reference, prompts, owners, ids, mask, cfg.learner.micro_batch_size, chunk=cfg.learner.logprob_chunk
        )
        answered, expand = answered_prompts(prompts, owners)
        # DDP and FSDP2 average the ranks' gradients while each rank's loss is the mean over its own pairs: weighed
        # by its share of all the pairs, the step follows the mean over every pair (a rank without pairs does not
        # halve it)
        share, losses = rank_share(len(batch.pairs), policy.device), []
        for _ in range(cfg.learner.epochs):
            learner.accumulator.epoch(1)
            logp, _ = learner.scorer(answered, ids, mask, expand=expand)
            if not batch.pairs:  # other ranks have pairs (learn_step skips a step where none has): join their backward
                learner.accumulator.backward(logp.sum() * 0.0)
                continue
            seq, ref_seq, k = masked_sample_sum(logp, mask), masked_sample_sum(ref, mask), len(chosen)
            loss, info = dpo_loss(seq[:k], seq[k:], ref_seq[:k], ref_seq[k:], cfg.dpo.beta)
            learner.accumulator.backward(share * loss)
            losses.append({**info, "total": float(loss.detach())})
        return loss_means(losses)

    def learning_rows(self, batch: LearnBatch) -> int:
        return len(batch.pairs)


ALGORITHM = DPO


def preference_batch(
    step: int, rollout: RolloutBatch, samples: list[Sample], results: list[dict | None], weights: dict[str, float]
) -> tuple[LearnBatch, dict[str, float]]:
    """DPO pairs from each group: the response with the highest weighted total reward (`weights`:
    `rl.config.scalar_reward_weights`) against the lowest."""
    p, g = len(samples), rollout.group_size
    table, valid = reward_table(results, p, g)
    total = sum(weights.get(name, 0.0) * values for name, values in table.items())
    pairs = dpo_pairs_from_groups(total, valid)
    batch = rollout_batch(step, rollout, samples, valid, pairs=pairs, scores=results)
    return batch, {**reward_metrics(table, valid), "dpo/pairs": float(len(pairs))}


def read_pairs_file(path: str) -> list[tuple[str, str, str]]:
    """(uid, chosen, rejected) from a JSONL file of {"uid", "chosen", "rejected"}; a bad line is named."""

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
