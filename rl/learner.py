"""The learner: the loop each Ray Train worker runs (DDP over gloo on CPU, NCCL on GPUs).

Each step it takes its shard of the controller's batch, recomputes the old log-probs, runs `learner.epochs` passes of
micro-batches (AdamW, gradient accumulation and clipping), steps the LR schedule, and rank 0 hands the new trainable
weights to the controller, which pushes them to the rollout workers as the next version. Every `checkpoint.every`
steps rank 0 writes policy + optimizer + step through `ray.train.report`; a restarted run resumes from the latest.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from policies import PointVLM
from rl.batches import LearnBatch
from rl.config import policy_overrides, run_quant
from rl.config_loading import config_from_dict
from rl.losses import clipped_surrogate_loss, dpo_loss, kl_penalty, masked_sample_sum, nll_loss, spa_loss
from rollout.batching import policy_inputs

NEEDS_REFERENCE = ("dpo",)


class ResponseScorer(torch.nn.Module):
    """DDP synchronizes gradients of what flows through `forward`; for a policy that is its response log-probs."""

    def __init__(self, policy: PointVLM):
        super().__init__()
        self.policy = policy

    def forward(self, inputs, response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        return self.policy.logprobs(inputs, response_ids, response_mask)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then constant, cosine or linear decay to 0 over the remaining steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return {"constant": 1.0, "cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1.0 - progress}[schedule]


def micro_batches(rows: int, size: int) -> list[list[int]]:
    return [list(range(start, min(start + size, rows))) for start in range(0, rows, size)]


def sequence_logprobs(policy: PointVLM, inputs, ids: torch.Tensor, mask: torch.Tensor, size: int) -> torch.Tensor:
    """Per-token log-probs of every row without gradients, in micro-batches."""
    with torch.no_grad():
        return torch.cat([policy.logprobs(inputs.select(rows), ids[rows], mask[rows]) for rows in micro_batches(len(ids), size)])


def policy_gradient_update(scorer, policy, reference, batch: LearnBatch, cfg, step_optimizer) -> dict[str, float]:
    """GRCA / GRPO (GRCA eqs. 15-16): clipped surrogate over token advantages, several epochs over the batch."""
    inputs = policy_inputs(policy, batch.samples, run_quant(cfg), cfg.data.use_images).repeat_interleave(batch.group_size)
    ids, mask, advantages = batch.response_ids, batch.response_mask, batch.advantages
    old = sequence_logprobs(policy, inputs, ids, mask, cfg.learner.micro_batch_size)
    ref = sequence_logprobs(reference, inputs, ids, mask, cfg.learner.micro_batch_size) if reference else None
    stats = {"onpolicy/max_abs_logprob_diff": float(((old - batch.rollout_logprobs).abs() * mask).max())}
    for _ in range(cfg.learner.epochs):
        for k, rows in enumerate(micro_batches(len(ids), cfg.learner.micro_batch_size)):
            logp = scorer(inputs.select(rows), ids[rows], mask[rows])
            loss, info = clipped_surrogate_loss(logp, old[rows], advantages[rows], mask[rows], cfg.algo.clip_eps,
                                                cfg.algo.clip_eps_high)
            if ref is not None:
                kl, kl_info = kl_penalty(logp, ref[rows], mask[rows], cfg.algo.kl_beta)
                loss, info = loss + kl, {**info, **kl_info}
            step_optimizer(loss, k)
            stats.update({f"loss/{key}": value for key, value in info.items()}, **{"loss/total": float(loss.detach())})
    return stats


def target_update(scorer, policy, reference, batch: LearnBatch, cfg, step_optimizer) -> dict[str, float]:
    """SFT (NLL on the serialized targets, GRCA eq. 5) or SPA (clean vs corrupted cloud, SPA eqs. 3-6)."""
    ids, mask = policy.tokenize_responses(batch.response_texts)
    clouds = batch.samples + (batch.corrupted or [])
    inputs = policy_inputs(policy, clouds, run_quant(cfg), cfg.data.use_images)
    n, stats = len(batch.samples), {}
    for _ in range(cfg.learner.epochs):
        for k, rows in enumerate(micro_batches(n, cfg.learner.micro_batch_size)):
            # clean and corrupted rows go through one forward: DDP expects one forward per backward
            clouds_rows, target_rows = (rows + [n + r for r in rows], rows + rows) if batch.corrupted else (rows, rows)
            logp = scorer(inputs.select(clouds_rows), ids[target_rows], mask[target_rows])
            if batch.corrupted:
                clean, masked = logp[: len(rows)], logp[len(rows) :]
                loss, info = spa_loss(clean, masked, mask[rows], cfg.spa.beta, cfg.spa.nll_weight)
            else:
                loss, info = nll_loss(logp, mask[rows])
            step_optimizer(loss, k)
            stats.update({f"loss/{key}": value for key, value in info.items()}, **{"loss/total": float(loss.detach())})
    return stats


def preference_update(scorer, policy, reference, batch: LearnBatch, cfg, step_optimizer) -> dict[str, float]:
    """DPO against the frozen reference, all of this rank's pairs in one forward (so every rank runs one backward)."""
    inputs = policy_inputs(policy, batch.samples, run_quant(cfg), cfg.data.use_images).repeat_interleave(batch.group_size)
    all_ids, all_mask = ((batch.response_ids, batch.response_mask) if batch.response_ids is not None
                         else policy.tokenize_responses(batch.response_texts))
    chosen, rejected = [a for a, _ in batch.pairs], [b for _, b in batch.pairs]
    rows = chosen + rejected or [0]
    ids, mask = all_ids[rows], all_mask[rows]
    ref = sequence_logprobs(reference, inputs.select(rows), ids, mask, cfg.learner.micro_batch_size)
    stats = {}
    for _ in range(cfg.learner.epochs):
        logp = scorer(inputs.select(rows), ids, mask)
        if not batch.pairs:
            step_optimizer(logp.sum() * 0.0, 0)
            continue
        seq, ref_seq, k = masked_sample_sum(logp, mask), masked_sample_sum(ref, mask), len(chosen)
        loss, info = dpo_loss(seq[:k], seq[k:], ref_seq[:k], ref_seq[k:], cfg.dpo.beta)
        step_optimizer(loss, 0)
        stats.update({f"loss/{key}": value for key, value in info.items()}, **{"loss/total": float(loss.detach())})
    return stats


UPDATES = {"grca": policy_gradient_update, "grpo": policy_gradient_update, "sft": target_update, "spa": target_update,
           "dpo": preference_update}


def _mean_over_ranks(stats: dict[str, float], world: int) -> dict[str, float]:
    if world == 1:
        return stats
    keys = sorted(stats)
    values = torch.tensor([stats[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(values)
    return dict(zip(keys, (values / world).tolist()))


def _save_checkpoint(policy: PointVLM, optimizer, scheduler, step: int, directory: Path) -> None:
    policy.save_pretrained(directory / "policy")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, directory / "optimizer.pt")
    (directory / "state.json").write_text(json.dumps({"step": step}))


def learner_loop(loop_config: dict) -> None:
    """Ray Train's train_loop_per_worker. loop_config: config (dict), controller (actor name), policy_dir, final_dir."""
    cfg = config_from_dict(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    controller = ray.get_actor(loop_config["controller"])
    torch.manual_seed(cfg.run.seed + rank)
    checkpoint = ray.train.get_checkpoint()
    with (checkpoint.as_directory() if checkpoint else tempfile.TemporaryDirectory()) as resume_dir:
        resumed = checkpoint is not None
        start = json.loads((Path(resume_dir) / "state.json").read_text())["step"] if resumed else 0
        policy_dir = Path(resume_dir) / "policy" if resumed else loop_config["policy_dir"]
        policy = PointVLM.from_pretrained(policy_dir, **policy_overrides(cfg))
        optimizer_state = torch.load(Path(resume_dir) / "optimizer.pt", weights_only=True) if resumed else None
    reference = PointVLM.from_pretrained(loop_config["policy_dir"]).eval() if cfg.algo.name in NEEDS_REFERENCE or cfg.algo.kl_beta > 0 else None
    scorer = ray.train.torch.prepare_model(ResponseScorer(policy), parallel_strategy_kwargs={"find_unused_parameters": True})
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learner.lr, betas=tuple(cfg.learner.betas), weight_decay=cfg.learner.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.run.steps, cfg.learner.warmup_steps, cfg.learner.schedule))
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state["optimizer"])
        scheduler.load_state_dict(optimizer_state["scheduler"])
    grad_norms: list[float] = []

    def step_optimizer(loss: torch.Tensor, micro: int) -> None:
        (loss / cfg.learner.grad_accum).backward()
        if (micro + 1) % cfg.learner.grad_accum == 0:
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(trainable, cfg.learner.grad_clip)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    if rank == 0:
        ray.get(controller.publish.remote(start, ray.put(policy.trainable_state_dict())))
    for step in range(start, cfg.run.steps):
        batch: LearnBatch = ray.get(controller.next_batch.remote(step, rank, world))
        began = time.perf_counter()
        lag = step - batch.version
        if lag > cfg.rollout.max_staleness:
            raise RuntimeError(f"step {step}: rollout from policy version {batch.version} is {lag} versions stale "
                               f"(rollout.max_staleness={cfg.rollout.max_staleness})")
        policy.train()
        grad_norms.clear()
        stats = UPDATES[cfg.algo.name](scorer, policy, reference, batch, cfg, step_optimizer)
        if any(p.grad is not None for p in trainable):  # a partial accumulation window at the end of the batch
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(trainable, cfg.learner.grad_clip)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        policy.eval()
        stats.update({"learner/grad_norm": max(grad_norms, default=0.0), "learner/lr": scheduler.get_last_lr()[0],
                      "learner/version_lag": float(lag), "time/learn": time.perf_counter() - began})
        stats = _mean_over_ranks(stats, world)
        if rank == 0:
            ray.get(controller.finish_step.remote(step, stats, ray.put(policy.trainable_state_dict())))
        last = step + 1 == cfg.run.steps
        if (step + 1) % cfg.checkpoint.every == 0 or last:
            with tempfile.TemporaryDirectory() as tmp:
                if rank == 0:
                    _save_checkpoint(policy, optimizer, scheduler, step + 1, Path(tmp))
                ray.train.report({"step": step + 1, **stats}, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)
        if world > 1:
            dist.barrier()
    if rank == 0:
        policy.save_pretrained(loop_config["final_dir"])
