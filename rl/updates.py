"""The update of each algorithm on one learner rank's batch, side by side: GRCA and GRPO (the clipped surrogate over
token advantages), SFT and SPA (teacher forcing on the targets, with the cloud-alignment loss or the corrupted
clouds), DPO (pairs against a frozen reference); and the gradient accumulation they share. Pure torch, no Ray.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from policies import PointVLM
from policies.reconstruction import random_patch_mask
from rl.batches import LearnBatch, alignment_targets
from rl.config import ALIGN_CATEGORIES, recomputes_old_logprobs, recon_weight, run_quant
from rl.losses import (
    clipped_surrogate_loss,
    cloud_alignment_loss,
    dpo_loss,
    kl_penalty,
    masked_sample_sum,
    nll_loss,
    patch_reconstruction_loss,
    spa_loss,
    truncated_importance_weights,
)
from rl.sharding import clip_gradients, sum_over_ranks
from rollout.batching import policy_inputs


class Accumulator:
    """Gradient accumulation whose windows never cross an epoch. `epoch(n)` opens an epoch of n micro-batches;
    `backward(loss)` adds one micro-batch's gradient and, when its window of `grad_accum` micro-batches (fewer at the
    end of an epoch) is complete, clips the sum and steps the optimizer. Each loss is divided by the size of its own
    window, so every optimizer step follows the mean gradient of the micro-batches it saw."""

    def __init__(self, optimizer: torch.optim.Optimizer, params, grad_accum: int, grad_clip: float):
        self.optimizer, self.params = optimizer, list(params)
        self.grad_accum, self.grad_clip = grad_accum, grad_clip
        self.grad_norms: list[float] = []  # one per optimizer step (learn_step clears it each RL step)
        self.done = self.size = 0  # micro-batches run in the open epoch, and its length

    def epoch(self, micro_batches: int) -> None:
        if self.done != self.size:
            raise RuntimeError(f"the previous epoch ran {self.done} of its {self.size} micro-batches")
        self.done, self.size = 0, micro_batches

    def backward(self, loss: torch.Tensor) -> None:
        if self.done == self.size:
            raise RuntimeError(f"micro-batch {self.done + 1} of an epoch of {self.size}")
        start = self.done - self.done % self.grad_accum  # the first micro-batch of this one's window
        window = min(self.grad_accum, self.size - start)
        (loss / window).backward()
        self.done += 1
        if self.done == start + window:
            self.grad_norms.append(clip_gradients(self.params, self.grad_clip))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


def loss_means(losses: list[dict[str, float]]) -> dict[str, float]:
    """`loss/<key>`: each statistic averaged over every micro-batch of every epoch of the step."""
    return {f"loss/{key}": sum(row[key] for row in losses) / len(losses) for key in losses[0]} if losses else {}


def micro_batches(rows: int, size: int) -> list[list[int]]:
    return [list(range(start, min(start + size, rows))) for start in range(0, rows, size)]


def answered_prompts(prompts, owners: list[int]) -> tuple:
    """The prompts that responses answer, each once (`prompts` rows `owners`, deduplicated), and each response's
    index into them: `PointVLM.logprobs(..., expand=)` then encodes each cloud once for its G samples."""
    distinct = sorted(set(owners))
    position = {prompt: i for i, prompt in enumerate(distinct)}
    return prompts.select(distinct), torch.tensor([position[o] for o in owners])


def sequence_logprobs(
    policy: PointVLM,
    prompts,
    owners: list[int],
    ids: torch.Tensor,
    mask: torch.Tensor,
    size: int,
    temperature: float = 1.0,
    chunk: int = 0,
    min_new_tokens: int = 0,
) -> torch.Tensor:
    """Per-token log-probs of every response (response r answers prompt `owners[r]`) without gradients, in
    micro-batches (`min_new_tokens`: `PointVLM.logprobs`)."""
    parts = []
    with torch.no_grad():
        for rows in micro_batches(len(ids), size):
            answered, expand = answered_prompts(prompts, [owners[r] for r in rows])
            parts.append(
                policy.logprobs(
                    answered,
                    ids[rows],
                    mask[rows],
                    temperature,
                    chunk=chunk,
                    expand=expand,
                    min_new_tokens=min_new_tokens,
                )
            )
    return torch.cat(parts)


def reconstruction_request(policy: PointVLM, prompts, cfg) -> tuple | None:
    """The scorer's `recon` argument: these prompts with a fresh random patch mask (the learner's seeded torch RNG),
    or None when this run's algorithm has no reconstruction loss."""
    if recon_weight(cfg) == 0:
        return None
    return prompts, random_patch_mask(len(prompts), policy.point_encoder.num_tokens - 1, cfg.recon.mask_ratio)


def with_reconstruction(loss: torch.Tensor, info: dict, extras: dict, cfg) -> tuple[torch.Tensor, dict]:
    """The loss plus the weighted patch reconstruction loss, when the scorer computed one."""
    if "recon" not in extras:
        return loss, info
    recon, recon_info = patch_reconstruction_loss(*extras["recon"])
    return loss + recon_weight(cfg) * recon, {**info, **recon_info}


def on_device(device: torch.device, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The batch's tensors where the policy computes (the controller sends them on the CPU)."""
    return [None if t is None else t.to(device) for t in tensors]


def policy_gradient_update(scorer, policy, reference, batch: LearnBatch, cfg, accumulator: Accumulator) -> dict:
    """GRCA / GRPO (GRCA eqs. 15-16): clipped surrogate over token advantages, several epochs over the batch."""
    prompts = policy_inputs(policy, batch.samples, run_quant(cfg), cfg.data.use_images)  # [P]
    owners = [row // batch.group_size for row in range(len(batch.response_ids))]  # [P x G]: each row's prompt
    ids, mask, advantages, rollout_logprobs = on_device(
        policy.device, batch.response_ids, batch.response_mask, batch.advantages, batch.rollout_logprobs
    )
    # every log-prob at the sampling temperature and with the stops suppressed before rollout.min_new_tokens, so that
    # the ratio's denominator is the distribution the rollout drew from
    temperature, size, chunk = cfg.rollout.temperature, cfg.learner.micro_batch_size, cfg.learner.logprob_chunk
    scoring = (size, temperature, chunk, cfg.rollout.min_new_tokens)
    ref = sequence_logprobs(reference, prompts, owners, ids, mask, *scoring) if reference else None
    # the ratio's denominator: the rollout's own log-probs where its arithmetic is the learner's, else the learner's
    # recomputation (rl.config.recomputes_old_logprobs); one_step_off, that recomputation is the proximal policy of
    # decoupled PPO and each token is weighed by its truncated importance weight to the one-version-older rollout
    behaviour, is_weights, stats, losses = rollout_logprobs, None, {}, []
    if recomputes_old_logprobs(cfg):
        behaviour = sequence_logprobs(policy, prompts, owners, ids, mask, *scoring)
        gap = (behaviour - rollout_logprobs).abs() * mask
        stats["onpolicy/max_abs_logprob_diff"] = float(gap.max())
        stats["onpolicy/mean_abs_logprob_diff"] = float(gap.sum() / mask.sum().clamp(min=1))
        if cfg.rollout.mode == "one_step_off":
            is_weights, is_stats = truncated_importance_weights(
                behaviour, rollout_logprobs, mask, cfg.algo.max_is_weight
            )
            stats.update(is_stats)
    for _ in range(cfg.learner.epochs):
        chunks = micro_batches(len(ids), size)
        accumulator.epoch(len(chunks))
        for rows in chunks:
            answered, expand = answered_prompts(prompts, [owners[r] for r in rows])
            recon = reconstruction_request(policy, answered, cfg)
            logp, extras = scorer(
                answered,
                ids[rows],
                mask[rows],
                temperature,
                recon=recon,
                expand=expand,
                min_new_tokens=cfg.rollout.min_new_tokens,
            )
            loss, info = clipped_surrogate_loss(
                logp,
                behaviour[rows],
                advantages[rows],
                mask[rows],
                cfg.algo.clip_eps,
                cfg.algo.clip_eps_high,
                None if is_weights is None else is_weights[rows],
            )
            loss, info = with_reconstruction(loss, info, extras, cfg)
            if ref is not None:
                kl, kl_info = kl_penalty(logp, ref[rows], mask[rows], cfg.algo.kl_beta)
                loss, info = loss + kl, {**info, **kl_info}
            accumulator.backward(loss)
            losses.append({**info, "total": float(loss.detach())})
    return {**stats, **loss_means(losses)}


def target_update(scorer, policy, reference, batch: LearnBatch, cfg, accumulator: Accumulator) -> dict:
    """SFT (NLL on the serialized targets, GRCA eq. 5, plus the cloud-alignment loss when sft.align_weight > 0) or
    SPA (clean vs corrupted cloud, SPA eqs. 3-6)."""
    ids, mask = on_device(policy.device, *policy.tokenize_responses(batch.response_texts))
    clouds = batch.samples + (batch.corrupted or [])
    inputs = policy_inputs(policy, clouds, run_quant(cfg), cfg.data.use_images)
    n, losses = len(batch.samples), []
    align = cfg.algo.name == "sft" and cfg.sft.align_weight > 0
    align_targets = on_device(policy.device, *alignment_targets(batch.samples)) if align else None
    for _ in range(cfg.learner.epochs):
        chunks = micro_batches(n, cfg.learner.micro_batch_size)
        accumulator.epoch(len(chunks))
        for rows in chunks:
            # clean and corrupted rows go through one forward: DDP expects one forward per backward
            clouds_rows, target_rows = (rows + [n + r for r in rows], rows + rows) if batch.corrupted else (rows, rows)
            if batch.corrupted:
                logp, _ = scorer(inputs.select(clouds_rows), ids[target_rows], mask[target_rows])
                clean, masked = logp[: len(rows)], logp[len(rows) :]
                loss, info = spa_loss(clean, masked, mask[rows], cfg.spa.beta, cfg.spa.nll_weight)
            else:
                recon = reconstruction_request(policy, inputs.select(rows), cfg)
                logp, extras = scorer(inputs.select(rows), ids[rows], mask[rows], align=align, recon=recon)
                loss, info = nll_loss(logp, mask[rows])
                if align:
                    box, category, colour = (t[rows] for t in align_targets)
                    aligned, align_info = cloud_alignment_loss(
                        extras["align"], box, category, colour, len(ALIGN_CATEGORIES)
                    )
                    loss, info = loss + cfg.sft.align_weight * aligned, {**info, **align_info}
                loss, info = with_reconstruction(loss, info, extras, cfg)
            accumulator.backward(loss)
            losses.append({**info, "total": float(loss.detach())})
    return loss_means(losses)


def preference_update(scorer, policy, reference, batch: LearnBatch, cfg, accumulator: Accumulator) -> dict:
    """DPO against the frozen reference, all of this rank's pairs in one forward (so every rank runs one backward)."""
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
        reference, prompts, owners, ids, mask, cfg.learner.micro_batch_size, chunk=cfg.learner.logprob_chunk
    )
    answered, expand = answered_prompts(prompts, owners)
    # DDP and FSDP2 average the ranks' gradients while each rank's loss is the mean over its own pairs: weighed by its
    # share of all the pairs, the step follows the mean over every pair (a rank without pairs does not halve it)
    share, losses = rank_share(len(batch.pairs), policy.device), []
    for _ in range(cfg.learner.epochs):
        accumulator.epoch(1)
        logp, _ = scorer(answered, ids, mask, expand=expand)
        if not batch.pairs:  # other ranks have pairs (learn_step skips a step where none has): join their backward
            accumulator.backward(logp.sum() * 0.0)
            continue
        seq, ref_seq, k = masked_sample_sum(logp, mask), masked_sample_sum(ref, mask), len(chosen)
        loss, info = dpo_loss(seq[:k], seq[k:], ref_seq[:k], ref_seq[k:], cfg.dpo.beta)
        accumulator.backward(share * loss)
        losses.append({**info, "total": float(loss.detach())})
    return loss_means(losses)


def rank_share(count: int, device: torch.device) -> float:
    """count x world / (count summed over the ranks): how much this rank's mean loss must weigh so that the ranks'
    averaged gradient is the mean over all of their items (1 in a single process). Every rank must call it."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    return count * world / max(sum_over_ranks(count, world, device), 1) if world > 1 else 1.0


UPDATES = {
    "grca": policy_gradient_update,
    "grpo": policy_gradient_update,
    "sft": target_update,
    "spa": target_update,
    "dpo": preference_update,
}


def learning_rows(batch: LearnBatch, algo: str) -> int:
    """What in this rank's shard can teach anything: DPO's pairs, the rows whose reward came back, or every target."""
    if algo == "dpo":
        return len(batch.pairs)
    return int(batch.valid.sum()) if batch.valid is not None else len(batch.samples)
